"""The Python API: sparsify a captured program with a recipe."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch.export import ExportedProgram

from .analyze import find_prunable_weights
from .ir import MaskSpec, get_node_info
from .pass_infra import PassInstrument, TimingInstrument
from .pipelines import fold_pipeline, mask_pipeline
from .recipe import Plan, Recipe, load_recipe, plan_masks
from .report import SparsityReport

__all__ = ["NoPrunableLayersError", "SparsifyResult", "sparsify", "mask_specs"]


class NoPrunableLayersError(ValueError):
    pass


@dataclass
class SparsifyResult:
    program: ExportedProgram
    report: SparsityReport
    plan: Plan


def mask_specs(program: ExportedProgram) -> dict[str, MaskSpec]:
    """The `MaskSpec` of every weight of ``program`` that has one, by FQN."""
    out = {}
    for node in program.graph.nodes:
        info = get_node_info(node)
        if info is not None and info.spec is not None:
            out[info.spec.fqn] = info.spec
    return out


def sparsify(
    program: ExportedProgram,
    recipe: Recipe | dict[str, Any] | str | os.PathLike,
    *,
    fold: bool = False,
    verify: bool = True,
    stats: dict | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    instruments: Sequence[PassInstrument] = (),
    model_name: str = "",
) -> SparsifyResult:
    """Make ``program``'s weights sparse as ``recipe`` says.

    Returns a new program (the input is left untouched) with masks in the
    graph (``fold=False``: still trainable, masks removable) or baked into the
    weights (``fold=True``: what backends take), and a per-layer report. With
    ``verify`` every weight's pattern is checked exactly after each stage.
    """
    recipe = load_recipe(recipe)
    analysis = find_prunable_weights(program)
    if not analysis.weights:
        ops = sorted({str(n.target) for n in program.graph.nodes if n.op == "call_function"})
        raise NoPrunableLayersError(
            "the program has no prunable layer: sparsecc prunes parameters used as the weight of "
            f"linear, conv or matmul ops; this program calls: {', '.join(ops[:12]) or 'no ops'}"
        )
    timer = TimingInstrument()
    t0 = time.perf_counter()
    plan = plan_masks(recipe, analysis)
    timings = {"plan": time.perf_counter() - t0}
    # When folding, one verification of the folded weights covers both stages.
    program = mask_pipeline(plan.specs, stats=stats, progress=progress, verify=verify and not fold,
                            instruments=[timer, *instruments])(program).program
    if fold:
        program = fold_pipeline(verify=verify, instruments=[timer, *instruments])(program).program
    for name, t in timer.timings:
        if name not in ("mask", "fold"):
            timings[name] = timings.get(name, 0.0) + t
    report = SparsityReport.build(
        analysis, mask_specs(program), plan.skipped, recipe=recipe.to_dict(), timings=timings, model=model_name
    )
    return SparsifyResult(program, report, plan)
