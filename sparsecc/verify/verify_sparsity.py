"""VerifySparsityPass: every weight with a `MaskSpec` obeys its pattern, exactly.

Checks the weight as the program computes with it (masked, or folded) and
makes sure its spec records the achieved sparsity (a new program only when
a recorded figure was wrong). Any violation fails the pass with the full
list, one line per weight.
"""

from __future__ import annotations

from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.plan.masks import apply_mask, check_pattern
from sparsecc.core.pass_infra import PassBase, PassError, PassResult
from sparsecc.core.program import ProgramEditor, state_tensor
from sparsecc.errors import VerificationError

__all__ = ["VerifySparsityPass", "SparsityVerificationError"]


class SparsityVerificationError(PassError, VerificationError):
    def __init__(self, violations: list[tuple[str, str]]):
        lines = "\n".join(f"  {fqn}: {why}" for fqn, why in violations)
        super().__init__("VerifySparsityPass", f"{len(violations)} weight(s) break their pattern:\n{lines}")
        self.violations = violations


class VerifySparsityPass(PassBase):
    threads = 1  # one comparison and count per weight (see PassBase)

    def call(self, program: ExportedProgram) -> PassResult:
        weights = find_prunable_weights(program).by_fqn()
        violations: list[tuple[str, str]] = []
        stale: dict[str, float] = {}  # node name -> achieved, where the spec says otherwise
        for node in program.graph.nodes:
            info = get_node_info(node) if node.op == "placeholder" else None
            if info is None or info.spec is None:
                continue
            spec = info.spec
            w = weights.get(spec.fqn)
            if w is None:
                violations.append((spec.fqn, "no longer a prunable weight of the program"))
                continue
            weight = state_tensor(program, spec.fqn).detach()
            if info.mask is not None:
                weight = apply_mask(weight, state_tensor(program, info.mask))
            why, achieved = check_pattern(weight, spec.pattern, spec.target, w.output_axis, w.reduction_axis)
            if why:
                violations.append((spec.fqn, why))
            if achieved != spec.achieved:
                stale[node.name] = achieved
        if violations:
            raise SparsityVerificationError(violations)
        if not stale:
            return PassResult(program, False)
        ed = ProgramEditor(program)
        for node in ed.placeholders():
            if node.name in stale:
                set_node_info(node, spec=get_node_info(node).spec.with_achieved(stale[node.name]))
        return PassResult(ed.finish(), False)

