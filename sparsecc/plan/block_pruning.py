"""Pruning one captured block on its calibration hidden states, then running it to feed the next.

A decoder's blocks share one structure, so one block is captured once
(`torch.export`) and every block after it only swaps its weights into the
program. Inside a block the weights are solved in order on the activations of
the already-pruned weights before them (`sequential_solve`, the same engine
and criteria as the in-memory path: q, k and v together, then o, gate and up,
then down); the pruned block then runs on every batch to give the next
block's inputs.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.ir import SparsityPattern
from sparsecc.plan.calibration_data import CalibrationData, CalibrationError
from sparsecc.plan.criteria import CriterionContext, choose_mask, criterion_info
from sparsecc.plan.graph_runner import GraphRunner
from sparsecc.plan.masks import pattern_violation
from sparsecc.plan.sequential import sequential_solve

__all__ = ["BlockPruning", "BlockResult", "set_block_weights", "mask_crc32"]


def mask_crc32(mask: torch.Tensor) -> str:
    """A fingerprint of a keep-mask: two masks are equal when their fingerprints are (bar collisions)."""
    return f"{zlib.crc32(np.packbits(mask.reshape(-1).numpy()).tobytes()):08x}"


def set_block_weights(program: ExportedProgram, weights: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Put ``weights`` (names relative to the block) into the captured block, checking each shape."""
    state = program.state_dict
    for name, t in weights.items():
        key = prefix + name
        if key not in state:
            raise CalibrationError(f"the captured block has no weight {key!r}")
        if tuple(state[key].shape) != tuple(t.shape):
            raise CalibrationError(f"weight {key!r} is {list(t.shape)}; the captured block has {list(state[key].shape)}")
        state[key] = torch.nn.Parameter(t, requires_grad=False) if isinstance(state[key], torch.nn.Parameter) else t


@dataclass
class BlockResult:
    new: dict[str, torch.Tensor]  # pruned weights by block-relative name (float32)
    masks: dict[str, dict[str, Any]]  # per weight: nonzeros, numel, mask fingerprint
    outputs: list[torch.Tensor]  # the block's outputs, one per input batch (the input list, overwritten)
    seconds: dict[str, float] = field(default_factory=dict)


class BlockPruning:
    """How every block is pruned: pattern, sparsity, criterion, its options; which weights (by suffix)."""

    def __init__(self, pattern: SparsityPattern, sparsity: float, criterion: str,
                 options: dict[str, Any] | None = None, prefix: str = "", skip: tuple[str, ...] = ()):
        try:
            info = criterion_info(criterion)
        except KeyError as e:
            raise CalibrationError(str(e.args[0])) from None
        if pattern.fixed_sparsity is None and not 0.0 <= float(sparsity) < 1.0:
            raise CalibrationError(f"sparsity {sparsity} is outside [0, 1)")
        if "taylor" in info.needs:
            raise CalibrationError(f"criterion {criterion!r} needs gradients of the whole model's loss; a "
                                   "streamed run sees one block: use magnitude, random, wanda or sparsegpt")
        self.pattern, self.criterion, self.options = pattern, criterion, dict(options or {})
        self.sparsity = pattern.fixed_sparsity if pattern.fixed_sparsity is not None else float(sparsity)
        self.needs = info.needs
        self.prefix, self.skip = prefix, skip

    def prune(self, program: ExportedProgram, batches: list[torch.Tensor],
              progress: Callable[[str], None] | None = None) -> BlockResult:
        """Prune the block now in ``program`` on ``batches`` (hidden states); run it with the new weights."""
        weights = {w.fqn: w for w in find_prunable_weights(program).weights
                   if w.role != "embedding" and not w.fqn.endswith(self.skip)}
        solved: dict[str, torch.Tensor] = {}
        masks: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()

        def solve(fqns: list[str], stats: dict[str, dict]) -> dict[str, torch.Tensor]:
            out = {}
            for f in fqns:
                w = weights[f]
                weight = program.state_dict[f].detach()
                ctx = CriterionContext(f, w.output_axis, w.reduction_axis, stats.get(f, {}), self.options)
                keep, new = choose_mask(weight, self.criterion, self.pattern, self.sparsity, ctx)
                value = (new if new is not None else weight).masked_fill(~keep, 0)
                why = pattern_violation(value, self.pattern, self.sparsity, w.output_axis, w.reduction_axis)
                if why:
                    raise CalibrationError(f"{f}: the pruned weight breaks {self.pattern}: {why}")
                solved[f] = out[f] = value
                masks[f] = {"nonzero": int(keep.sum()), "numel": keep.numel(), "mask_crc32": mask_crc32(keep)}
                if progress:
                    progress(f)
            return out

        if self.needs:
            data = CalibrationData([((x,), {}) for x in batches], join_batches=False)
            sequential_solve(program, data, solve, list(weights), self.needs)
            del data
        else:
            solve(list(weights), {})
        t1 = time.perf_counter()
        set_block_weights(program, solved)
        outputs = run_block(program, batches)  # in place: each input batch is dropped once its output exists
        t2 = time.perf_counter()
        rel = len(self.prefix)
        return BlockResult({f[rel:]: v for f, v in solved.items()}, {f[rel:]: m for f, m in masks.items()},
                           outputs, {"solve": t1 - t0, "forward": t2 - t1})


def run_block(program: ExportedProgram, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block's output for every batch, replacing the batch in ``batches`` (which is returned)."""
    runner = GraphRunner(program)
    with torch.no_grad():
        for i in range(len(batches)):
            result = runner.run(runner.initial_env(((batches[i],), {}), {}), 0, len(runner.nodes))
            batches[i] = result[0] if isinstance(result, (tuple, list)) else result
    return batches
