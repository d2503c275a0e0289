"""The Python API: sparsify a captured program with a recipe."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from torch.export import ExportedProgram

from sparsecc.core.analyze import Analysis, find_prunable_weights
from sparsecc.plan.budgets import Allocation, allocate
from sparsecc.plan.budgets import needs_calibration as budget_needs_calibration
from sparsecc.plan.budgets import needs_stats as budget_needs_stats
from sparsecc.plan.calibrate import CalibrationData, calibration_for, collect_stats, gradient_stats, sequential_solve
from sparsecc.plan.distributed import Ranks
from sparsecc.plan.criteria import CriterionContext, choose_mask, needs_calibration
from sparsecc.core.ir import MaskSpec, get_node_info
from sparsecc.core.program import placeholders_by_target, state_tensor
from sparsecc.core.pass_infra import PassInstrument, TimingInstrument
from sparsecc.flows.pipelines import fold_pipeline, mask_pipeline
from sparsecc.passes.quantize_weights import quantize_program
from sparsecc.plan.recipe import Plan, Recipe, load_recipe, plan_masks
from sparsecc.flows.report import SparsityReport
from sparsecc.flows.runtime_sparsity import apply_runtime_sparsity
from sparsecc.errors import UsageError

__all__ = ["NoPrunableLayersError", "SparsifyResult", "sparsify", "mask_specs", "recipe_needs_calibration",
           "recipe_calibration"]


class NoPrunableLayersError(UsageError, ValueError):
    pass


@dataclass
class SparsifyResult:
    program: ExportedProgram
    report: SparsityReport
    plan: Plan
    allocation: Allocation | None = None  # the layer-wise budget, when not uniform


def mask_specs(program: ExportedProgram) -> dict[str, MaskSpec]:
    """The `MaskSpec` of every weight of ``program`` that has one, by FQN."""
    out = {}
    for node in program.graph.nodes:
        info = get_node_info(node)
        if info is not None and info.spec is not None:
            out[info.spec.fqn] = info.spec
    return out


def recipe_needs_calibration(recipe: Recipe) -> bool:
    """Whether any criterion of ``recipe`` (its own or an override's) needs calibration data."""
    names = [recipe.criterion] + [o.criterion for o in recipe.overrides if o.criterion]
    static_int8 = recipe.quantize is not None and recipe.quantize.activations == "static"
    thresholds = recipe.activations is not None and recipe.activations.needs_calibration
    weights = recipe.weights_pruned and any(needs_calibration(n) for n in names)
    st = recipe.structured
    structured = st is not None and (st.reconstruct or st.criterion == "taylor")
    return static_int8 or thresholds or weights or structured


def recipe_calibration(spec: Any, recipe: Recipe, say: Callable[[str], None] | None = None,
                       ) -> CalibrationData | None:
    """Zoo model ``spec``'s calibration batches as ``recipe.calibration`` asks for them, when the recipe
    needs any (`recipe_needs_calibration`), else None; ``say`` hears that they are being loaded."""
    if not recipe_needs_calibration(recipe):
        return None
    if say is not None:
        say(f"loading {recipe.calibration.samples} calibration batches")
    return calibration_for(spec, recipe.calibration.samples, recipe.calibration.seq_len)


def sparsify(
    program: ExportedProgram,
    recipe: Recipe | dict[str, Any] | str | os.PathLike,
    *,
    fold: bool = False,
    verify: bool = True,
    stats: dict | None = None,
    calibration: CalibrationData | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    instruments: Sequence[PassInstrument] = (),
    model_name: str = "",
    ranks: Ranks | None = None,
    runtime: bool = True,
) -> SparsifyResult:
    """Make ``program``'s weights sparse as ``recipe`` says.

    Returns a new program (the input is left untouched) with masks in the
    graph (``fold=False``: still trainable, masks removable) or baked into the
    weights (``fold=True``: what backends take), and a per-layer report. With
    ``verify`` every weight's pattern is checked exactly after each stage.

    Criteria that need activations or gradients (wanda, sparsegpt, taylor)
    need ``calibration`` (or precomputed ``stats``); the recipe's
    ``calibration.sequential`` prunes block by block, as their papers do.

    ``ranks`` (`sparsecc.plan.distributed.start_ranks`, under torchrun) spreads
    the calibration batches and the activation-calibrated solves over the
    ranks; every rank returns the same program.

    ``runtime``: apply the recipe's ``activations:`` / ``attention:`` sections
    last (`apply_runtime_sparsity`); compile turns it off when recovery runs
    in between, so the thresholds see the recovered weights.
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
    plan = plan_masks(recipe, analysis) if recipe.weights_pruned else Plan(
        skipped={w.fqn: "the recipe prunes no weights (run-time sparsity only)" for w in analysis.weights})
    plan.specs = _embeddings_by_magnitude(plan.specs, analysis)
    timings = {"plan": time.perf_counter() - t0}
    stats = dict(stats or {})
    solved: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    options = dict(recipe.criterion_options)
    allocation = None
    if recipe.budget.method != "uniform":
        t0 = time.perf_counter()
        # Its own statistics: dense, one pass; sequential calibration must still run after it.
        allocation = _allocate(program, plan, analysis, recipe, calibration, dict(stats), progress)
        plan.specs = allocation.specs
        timings["budget"] = time.perf_counter() - t0
    if any(needs_calibration(s.criterion) for s in plan.specs):
        t0 = time.perf_counter()
        solved = _calibrate(program, plan.specs, analysis, recipe, calibration, stats, options, progress, ranks)
        timings["calibrate"] = time.perf_counter() - t0
    if plan.specs:  # When folding, one verification of the folded weights covers both stages.
        program = mask_pipeline(plan.specs, stats=stats, solved=solved, options=options, progress=progress,
                                verify=verify and not fold, instruments=[timer, *instruments])(program).program
        if fold:
            program = fold_pipeline(verify=verify, instruments=[timer, *instruments])(program).program
    if recipe.quantize is not None:  # int8 weights that keep every zero (the pass re-checks each pattern)
        t0 = time.perf_counter()
        program = quantize_program(program, recipe.quantize, calibration.batches if calibration else None)
        timings["quantize"] = time.perf_counter() - t0
    runtime_record: dict[str, Any] = {}
    if runtime and (recipe.activations is not None or recipe.attention is not None):
        t0 = time.perf_counter()
        say = (lambda msg: progress(0, 0, msg)) if progress is not None else None
        program, runtime_record = apply_runtime_sparsity(program, recipe, calibration, say)
        timings["runtime_sparsity"] = time.perf_counter() - t0
    for name, t in timer.timings:
        if name not in ("mask", "fold"):
            timings[name] = timings.get(name, 0.0) + t
    report = SparsityReport.build(
        analysis, mask_specs(program), plan.skipped, recipe=recipe.to_dict(), timings=timings, model=model_name,
        budget=allocation.to_dict() if allocation is not None else None, runtime=runtime_record,
    )
    return SparsifyResult(program, report, plan, allocation)


def _embeddings_by_magnitude(specs: list[MaskSpec], analysis: Analysis) -> list[MaskSpec]:
    """Embedding tables have no activation to calibrate on: they are pruned by magnitude."""
    roles = {w.fqn: w.role for w in analysis.weights}
    return [dataclasses.replace(s, criterion="magnitude")
            if roles[s.fqn] == "embedding" and needs_calibration(s.criterion) else s for s in specs]


def _allocate(program: ExportedProgram, plan: Plan, analysis: Analysis, recipe: Recipe,
              data: CalibrationData | None, stats: dict, progress) -> Allocation:
    """Spread the recipe's sparsity over the layers as its budget says (dense statistics, one pass)."""
    budget = recipe.budget
    kinds = budget_needs_stats(budget)
    if (kinds or budget_needs_calibration(budget)) and data is None:
        raise ValueError(f"budget {budget.method!r} needs calibration data: pass calibration=CalibrationData(...)")
    if kinds:
        roles = {w.fqn: w.role for w in analysis.weights}
        want = [s.fqn for s in plan.specs if roles[s.fqn] != "embedding" and not kinds <= set(stats.get(s.fqn, {}))]
        act = kinds - {"taylor"}
        if want and act:
            for f, d in collect_stats(program, data, want, act, progress=progress).items():
                stats.setdefault(f, {}).update(d)
        if want and "taylor" in kinds:
            for f, d in gradient_stats(program, data, want, progress=progress).items():
                stats.setdefault(f, {}).update(d)
    return allocate(plan, analysis, budget, program=program, stats=stats, calibration=data, progress=progress)


def _calibrate(program: ExportedProgram, specs: list[MaskSpec], analysis: Analysis, recipe: Recipe,
               data: CalibrationData | None, stats: dict, options: dict, progress,
               ranks: Ranks | None = None) -> dict:
    """Fill ``stats`` for the calibrated criteria; return masks already chosen block by block."""
    need: dict[str, frozenset[str]] = {}
    for s in specs:
        missing = needs_calibration(s.criterion) - set(stats.get(s.fqn, {}))
        if missing:
            need[s.fqn] = frozenset(missing)
    if not need:
        return {}
    if data is None:
        first = next(s for s in specs if s.fqn in need)
        raise ValueError(
            f"criterion {first.criterion!r} (layer {first.layer}) needs calibration data: pass "
            "calibration=CalibrationData(batches) to sparsify, or use a model whose loader provides it"
        )
    taylor = [f for f, n in need.items() if "taylor" in n]
    if taylor:
        for f, d in gradient_stats(program, data, taylor, progress=progress).items():
            stats.setdefault(f, {}).update(d)
    act = {f: n - {"taylor"} for f, n in need.items() if n - {"taylor"}}
    if not act:
        return {}
    kinds = frozenset().union(*act.values())
    if not recipe.calibration.sequential:
        for f, d in collect_stats(program, data, list(act), kinds, progress=progress, ranks=ranks).items():
            stats.setdefault(f, {}).update(d)
        if ranks is None:
            return {}
        by_spec, weights = {s.fqn: s for s in specs}, analysis.by_fqn()
        solved = {}
        for f in act:  # this rank's weights; the others' arrive by broadcast
            if ranks.owns(f):
                w = weights[f]
                ctx = CriterionContext(f, w.output_axis, w.reduction_axis, stats[f], options)
                solved[f] = choose_mask(state_tensor(program, f).detach(), by_spec[f].criterion,
                                        by_spec[f].pattern, by_spec[f].target, ctx)
        return _share_solved(ranks, program, list(act), solved)

    by_spec = {s.fqn: s for s in specs}
    weights = analysis.by_fqn()
    solved: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    placeholders = placeholders_by_target(program)

    def solve(fqns: list[str], block_stats: dict[str, dict]) -> dict[str, torch.Tensor]:
        out = {}
        for f in fqns:
            spec, w = by_spec[f], weights[f]
            weight = state_tensor(program, f).detach()
            info = get_node_info(placeholders[f])
            if info is not None and info.mask is not None:  # already masked: prune its masked values
                weight = weight * state_tensor(program, info.mask)
            ctx = CriterionContext(f, w.output_axis, w.reduction_axis, {**stats.get(f, {}), **block_stats[f]}, options)
            mask, new = choose_mask(weight, spec.criterion, spec.pattern, spec.target, ctx)
            solved[f] = (mask, new)
            out[f] = (new if new is not None else weight).masked_fill(~mask, 0)
        return out

    values = sequential_solve(program, data, solve, list(act), kinds, progress=progress, ranks=ranks)
    return solved if ranks is None else _share_solved(ranks, program, list(act), solved, values)


def _share_solved(ranks: Ranks, program: ExportedProgram, fqns: list[str],
                  solved: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
                  values: dict[str, torch.Tensor] | None = None) -> dict:
    """Every rank's (mask, new values) from each weight's owner.

    ``values``: the masked new values every rank already has (sequential
    calibration broadcast them as it went), so only the masks travel.
    """
    out = {}
    for f in fqns:
        src, weight = ranks.owner_of[f], state_tensor(program, f).detach()
        mask, new = solved.get(f, (None, None))
        mask = ranks.broadcast(mask, weight.new_empty(weight.shape, dtype=torch.bool), src, label=f)
        if values is not None:
            new = new if ranks.owns(f) else values[f]
        elif ranks.broadcast_flag(new is not None, src, label=f):
            new = ranks.broadcast(new, weight, src, label=f)
        out[f] = (mask, new)
    return out
