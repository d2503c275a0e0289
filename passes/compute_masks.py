"""ComputeMasksPass: score each planned weight with its criterion and pick its mask.

The masks are attached to the weight placeholders as pending masks (with the
`MaskSpec`, achieved sparsity filled in); `InsertMasksPass` puts them in the
graph. A weight that is already masked is scored on its masked values, so a
second round only ever prunes more.

Criteria that repair the surviving weights (SparseGPT) also replace the
weight's value in the program. Masks and values chosen earlier, block by
block, by sequential calibration arrive in ``solved`` and are used as they are.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.plan.criteria import CriterionContext, choose_mask, criterion_info
from sparsecc.plan.masks import apply_mask
from sparsecc.core.ir import MaskSpec, get_node_info, set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult, intra_op_threads
from sparsecc.core.program import ProgramEditor

__all__ = ["ComputeMasksPass"]

Progress = Callable[[int, int, str], None]


class ComputeMasksPass(PassBase):
    """Compute one mask per `MaskSpec` in ``plan``.

    ``stats`` maps a weight FQN to what calibrated criteria need (activation
    norms, Hessians); magnitude and random need nothing. ``progress(i, n, fqn)``
    is called before each weight. ``solved`` maps a weight FQN to a mask (and
    new weight values, or None) chosen beforehand; ``options`` are passed to
    the criteria (SparseGPT: ``blocksize``, ``damp``).
    """

    def __init__(
        self,
        plan: Sequence[MaskSpec],
        stats: dict[str, dict] | None = None,
        progress: Progress | None = None,
        solved: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        options: dict | None = None,
    ):
        self.plan = list(plan)
        self.stats = stats or {}
        self.progress = progress
        self.solved = solved or {}
        self.options = options or {}

    def requires(self, program: ExportedProgram) -> None:
        known = find_prunable_weights(program).by_fqn()
        missing = [s.fqn for s in self.plan if s.fqn not in known]
        if missing:
            raise ValueError(f"not prunable weights of this program: {', '.join(missing)}")
        for s in self.plan:
            info = criterion_info(s.criterion)
            missing_stats = [k for k in info.needs if k not in self.stats.get(s.fqn, {})]
            if missing_stats and s.fqn not in self.solved:
                raise ValueError(
                    f"{s.fqn}: criterion {s.criterion!r} needs calibration statistics "
                    f"({', '.join(sorted(missing_stats))}); pass calibration data"
                )

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
                if spec.fqn in self.solved:
                    mask, new = self.solved[spec.fqn]
                else:
                    ctx = CriterionContext(spec.fqn, w.output_axis, w.reduction_axis,
                                           self.stats.get(spec.fqn, {}), self.options)
                    # Score criteria are a few elementwise sweeps: one thread (see PassBase.threads);
                    # solvers pick their own threads.
                    solver = criterion_info(spec.criterion).kind == "solver"
                    with intra_op_threads(None if solver else 1):
                        mask, new = choose_mask(weight, spec.criterion, spec.pattern, spec.target, ctx)
                if new is not None:
                    if tuple(new.shape) != tuple(weight.shape):
                        raise ValueError(f"new values {tuple(new.shape)} do not match weight {tuple(weight.shape)}")
                    weight = apply_mask(new.detach().to(weight.dtype), mask)
                    ed.set_tensor(spec.fqn, weight)
                with intra_op_threads(1):  # the zeros of the masked weight, counted on booleans
                    kept = int(torch.count_nonzero(mask & (weight != 0)))
                achieved = 1.0 - kept / max(1, weight.numel())
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
