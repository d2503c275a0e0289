"""Zero every parameter slice of the removed units: the reference a shrunk program must equal."""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

from .plan import StructuredPlan, axis_keep

__all__ = ["MaskChannelsPass"]


class MaskChannelsPass(PassBase):
    """Same graph and shapes; the parameters of removed channels / heads are zero.

    Buffers and constants are left as they are: every removed index is read
    only through a zeroed weight slice (see `sparsecc.passes.structured.dependency`),
    so their values there do not matter.
    """

    def __init__(self, plan: StructuredPlan):
        self.plan = plan

    def call(self, program: ExportedProgram) -> PassResult:
        editor = ProgramEditor(program)
        kept = self.plan.kept_by_atom()
        modified = False
        for target, axes in self.plan.analysis.state_axes.items():
            if target not in editor.state_dict or not isinstance(editor.state_dict[target], torch.nn.Parameter):
                continue
            w = editor.state_dict[target]
            keep = torch.ones(w.shape, dtype=torch.bool)
            changed = False
            for ax in range(len(axes)):
                k = axis_keep(self.plan.analysis, target, ax, kept)
                if k is None or k.all():
                    continue
                shape = [1] * w.dim()
                shape[ax] = -1
                keep &= torch.from_numpy(k).reshape(shape)
                changed = True
            if changed:
                with self.at(target):
                    editor.set_tensor(target, (w.detach() * keep.to(w.dtype)).clone())
                modified = True
        return PassResult(editor.finish(), modified)
