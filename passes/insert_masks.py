"""InsertMasksPass: lift each pending mask as a constant and multiply the weight by it.

After this pass every masked weight ``W`` reaches its consumers as
``aten.mul(W, mask)``; the program still runs and still backpropagates into
``W`` (the mask gates the gradient too), which fine-tuning and learned masks
need. A weight that already has a mask gets the logical AND of old and new.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

__all__ = ["InsertMasksPass", "mask_target"]

aten = torch.ops.aten


def mask_target(fqn: str) -> str:
    """The constant's name for the mask of weight ``fqn``."""
    return f"{fqn}_mask"


class InsertMasksPass(PassBase):
    threads = 1  # one bool conversion per weight (see PassBase)

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        modified = False
        position = _position(ed)  # the original nodes keep their order; new muls are never users here
        for node in list(ed.placeholders()):
            info = get_node_info(node)
            if info is None or info.pending_mask is None:
                continue
            modified = True
            with self.at(node):
                fqn = ed.spec_of(node).target
                mask = info.pending_mask.to(torch.bool)
                if tuple(mask.shape) != tuple(ed.tensor(fqn).shape):
                    raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(ed.tensor(fqn).shape)}")
                if info.mask is not None:  # already masked: tighten in place
                    ed.set_tensor(info.mask, ed.tensor(info.mask) & mask)
                    set_node_info(node, pending_mask=None)
                    continue
                target = mask_target(fqn)
                mask_node = ed.add_constant(target, mask, name="c_" + target.replace(".", "_"))
                set_node_info(mask_node, mask_of=fqn)
                users = list(node.users)
                first = min(users, key=position)
                with ed.graph.inserting_before(first):
                    mul = ed.graph.call_function(aten.mul.Tensor, (node, mask_node))
                mul.meta["val"] = ed.fake_call(aten.mul.Tensor, node, mask_node)
                if "nn_module_stack" in first.meta:
                    mul.meta["nn_module_stack"] = dict(first.meta["nn_module_stack"])
                set_node_info(mul, apply_mask_of=fqn)
                for u in users:
                    u.replace_input_with(node, mul)
                set_node_info(node, mask=target, pending_mask=None)
        return PassResult(ed.finish(), modified)

    def ensures(self, program: ExportedProgram) -> None:
        for node in program.graph.nodes:
            info = get_node_info(node)
            if info is not None and info.pending_mask is not None:
                raise AssertionError(f"{node.name} still has a pending mask")


def _position(ed: ProgramEditor):
    order = {n: i for i, n in enumerate(ed.graph.nodes)}
    return order.__getitem__
