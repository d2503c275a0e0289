"""VerifySparsityPass: every weight with a `MaskSpec` obeys its pattern, exactly.

Checks the weight as the program computes with it (masked, or folded) and
records the achieved sparsity in its spec. Any violation fails the pass with
the full list, one line per weight.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from sparsecc.analyze import find_prunable_weights
from sparsecc.ir import get_node_info, set_node_info
from sparsecc.masks import check_pattern
from sparsecc.pass_infra import PassBase, PassError, PassResult
from sparsecc.program import ProgramEditor

__all__ = ["VerifySparsityPass", "SparsityVerificationError"]


class SparsityVerificationError(PassError):
    def __init__(self, violations: list[tuple[str, str]]):
        lines = "\n".join(f"  {fqn}: {why}" for fqn, why in violations)
        super().__init__("VerifySparsityPass", f"{len(violations)} weight(s) break their pattern:\n{lines}")
        self.violations = violations


class VerifySparsityPass(PassBase):
    def call(self, program: ExportedProgram) -> PassResult:
        weights = find_prunable_weights(program).by_fqn()
        ed = ProgramEditor(program)
        violations: list[tuple[str, str]] = []
        for node in list(ed.placeholders()):
            info = get_node_info(node)
            if info is None or info.spec is None:
                continue
            spec = info.spec
            w = weights.get(spec.fqn)
            if w is None:
                violations.append((spec.fqn, "no longer a prunable weight of the program"))
                continue
            weight = ed.tensor(spec.fqn).detach()
            if info.mask is not None:
                weight = weight * ed.tensor(info.mask)
            why, achieved = check_pattern(weight, spec.pattern, spec.target, w.output_axis, w.reduction_axis)
            if why:
                violations.append((spec.fqn, why))
            set_node_info(node, spec=spec.with_achieved(achieved))
        if violations:
            raise SparsityVerificationError(violations)
        return PassResult(ed.finish(), False)
