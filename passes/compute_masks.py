"""ComputeMasksPass: score each planned weight with its criterion and pick its mask.

The masks are attached to the weight placeholders as pending masks (with the
`MaskSpec`, achieved sparsity filled in); `InsertMasksPass` puts them in the
graph. A weight that is already masked is scored on its masked values, so a
second round only ever prunes more.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.analyze import find_prunable_weights
from sparsecc.criteria import CriterionContext, get_criterion
from sparsecc.ir import MaskSpec, get_node_info, set_node_info
from sparsecc.masks import compute_mask, sparsity_of
from sparsecc.pass_infra import PassBase, PassResult
from sparsecc.program import ProgramEditor

__all__ = ["ComputeMasksPass"]

Progress = Callable[[int, int, str], None]


class ComputeMasksPass(PassBase):
    """Compute one mask per `MaskSpec` in ``plan``.

    ``stats`` maps a weight FQN to what calibrated criteria need (activation
    norms, Hessians); magnitude and random need nothing. ``progress(i, n, fqn)``
    is called before each weight.
    """

    def __init__(
        self,
        plan: Sequence[MaskSpec],
        stats: dict[str, dict] | None = None,
        progress: Progress | None = None,
    ):
        self.plan = list(plan)
        self.stats = stats or {}
        self.progress = progress

    def requires(self, program: ExportedProgram) -> None:
        known = find_prunable_weights(program).by_fqn()
        missing = [s.fqn for s in self.plan if s.fqn not in known]
        if missing:
            raise ValueError(f"not prunable weights of this program: {', '.join(missing)}")
        for s in self.plan:
            get_criterion(s.criterion)

    def call(self, program: ExportedProgram) -> PassResult:
        weights = find_prunable_weights(program).by_fqn()
        ed = ProgramEditor(program)
        for i, spec in enumerate(self.plan):
            if self.progress:
                self.progress(i, len(self.plan), spec.fqn)
            w = weights[spec.fqn]
            node = ed.node_for_target(spec.fqn)
            with self.at(node):
                weight = _effective_weight(ed, node)
                ctx = CriterionContext(spec.fqn, w.output_axis, w.reduction_axis, self.stats.get(spec.fqn, {}))
                scores = get_criterion(spec.criterion)(weight, ctx)
                mask = compute_mask(scores, spec.pattern, spec.target, w.output_axis, w.reduction_axis)
                achieved = sparsity_of(weight.masked_fill(~mask, 0))
                set_node_info(node, spec=spec.with_achieved(achieved), pending_mask=mask)
        if self.progress:
            self.progress(len(self.plan), len(self.plan), "")
        return PassResult(ed.finish(), bool(self.plan))


def _effective_weight(ed: ProgramEditor, node) -> torch.Tensor:
    """The weight as the program computes with it: masked, if a mask is in place."""
    info = get_node_info(node)
    weight = ed.tensor(ed.spec_of(node).target).detach()
    if info is not None and info.mask is not None:
        weight = weight * ed.tensor(info.mask)
    return weight
