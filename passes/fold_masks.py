"""FoldMasksPass: bake each mask into its weight and drop the mask from the graph.

The folded program computes exactly what the masked one did (multiplying by
0/1 is exact), with plain weights that any backend can take. The weight keeps
its `MaskSpec`, so verification and backends still know its pattern.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor
from sparsecc.plan.masks import apply_mask

__all__ = ["FoldMasksPass"]


class FoldMasksPass(PassBase):
    threads = 1  # one elementwise sweep per weight (see PassBase)

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        modified = False
        for mul in list(ed.graph.nodes):
            info = get_node_info(mul)
            if info is None or info.apply_mask_of is None:
                continue
            modified = True
            with self.at(mul):
                weight_node, mask_node = mul.args
                fqn = ed.spec_of(weight_node).target
                mask = ed.tensor(ed.spec_of(mask_node).target)
                weight = ed.tensor(fqn)
                ed.set_tensor(fqn, apply_mask(weight.detach(), mask))
                mul.replace_all_uses_with(weight_node)
                ed.graph.erase_node(mul)
                ed.remove_input(mask_node)
                set_node_info(weight_node, mask=None)
        return PassResult(ed.finish(), modified)

    def ensures(self, program: ExportedProgram) -> None:
        for node in program.graph.nodes:
            info = get_node_info(node)
            if info is not None and (info.apply_mask_of or info.mask_of or info.mask):
                raise AssertionError(f"{node.name} still refers to a mask after folding")
