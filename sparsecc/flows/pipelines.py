"""The pass pipelines sparsecc runs, as explicit lists."""

from __future__ import annotations

from typing import Sequence

from sparsecc.core.ir import MaskSpec
from sparsecc.core.pass_infra import PassBase, PassInstrument, PassManager
from sparsecc.passes import ComputeMasksPass, FoldMasksPass, InsertMasksPass
from sparsecc.verify.verify_sparsity import VerifySparsityPass

__all__ = ["mask_pipeline", "fold_pipeline"]


def mask_pipeline(
    plan: Sequence[MaskSpec],
    *,
    stats: dict | None = None,
    solved: dict | None = None,
    options: dict | None = None,
    progress=None,
    verify: bool = True,
    instruments: Sequence[PassInstrument] = (),
) -> PassManager:
    """Choose masks for ``plan`` and put them in the graph (still trainable)."""
    passes: list[PassBase] = [ComputeMasksPass(plan, stats=stats, progress=progress, solved=solved, options=options), InsertMasksPass()]
    if verify:
        passes.append(VerifySparsityPass())
    return PassManager(passes, instruments, name="mask")


def fold_pipeline(*, verify: bool = True, instruments: Sequence[PassInstrument] = ()) -> PassManager:
    """Bake masks into weights: plain sparse weights any backend can take."""
    passes: list[PassBase] = [FoldMasksPass()]
    if verify:
        passes.append(VerifySparsityPass())
    return PassManager(passes, instruments, name="fold")
