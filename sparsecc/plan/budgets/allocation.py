"""`allocate`: re-allocating the planned per-layer targets under a `Budget`, and its result."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.export import ExportedProgram

from sparsecc.core.analyze import Analysis
from sparsecc.core.ir import MaskSpec

from .common import Layer, LossFn, Progress, block_of, units_of
from .ecoflap import ecoflap_sparsities
from .erk import erk_sparsities
from .global_threshold import global_counts
from .options import BUDGET_METHODS, Budget, BudgetError
from .owl import owl_sparsities
from .sensitivity import sensitivity_sparsities
from .solve import round_counts
from .uniform import uniform_sparsities

__all__ = ["LayerBudget", "Allocation", "allocate"]


@dataclass(frozen=True)
class LayerBudget:
    """One layer's share: ``sparsity`` of its ``units`` (entries, blocks or channels)."""

    fqn: str
    layer: str
    pattern: str
    params: int
    units: int
    sparsity: float
    pruned_params: int
    group: str = ""
    score: float | None = None
    fixed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Allocation:
    """The specs with their new targets, and the figures behind them."""

    budget: Budget
    target: float
    specs: list[MaskSpec]
    layers: list[LayerBudget]
    params: int
    target_pruned: int
    pruned: int
    seconds: float
    score_name: str = ""

    @property
    def sparsity(self) -> float:
        return self.pruned / max(1, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "target": self.target,
            "params": self.params,
            "target_pruned": self.target_pruned,
            "pruned": self.pruned,
            "sparsity": self.sparsity,
            "score": self.score_name,
            "seconds": self.seconds,
            "layers": [x.to_dict() for x in self.layers],
        }


def allocate(
    plan: Any,
    analysis: Analysis,
    budget: Budget,
    *,
    target: float | None = None,
    program: ExportedProgram | None = None,
    stats: dict[str, dict] | None = None,
    calibration: Any = None,
    loss: LossFn | None = None,
    progress: Progress | None = None,
) -> Allocation:
    """Re-allocate the planned per-layer targets under ``budget``.

    ``plan`` is a `sparsecc.recipe.Plan` (its ``fixed`` layers keep their
    targets) or a list of `MaskSpec`. ``target`` defaults to the
    parameter-weighted mean of the planned targets of the re-allocated layers
    (the recipe's ``sparsity``). ``program`` gives the weights (global, owl,
    ecoflap, sensitivity), ``stats`` the calibration statistics of calibrated
    scores, ``calibration`` the data for ``loss`` (default
    `sparsecc.calibrate.objective_loss`; ecoflap, sensitivity).

    Returns an `Allocation` whose ``specs`` are the planned specs, in order,
    with new targets. Raises `BudgetError` when the target cannot be met.
    """
    t0 = time.perf_counter()
    specs: list[MaskSpec] = list(getattr(plan, "specs", plan))
    fixed_reason: dict[str, str] = {f: "sparsity set by an override" for f in getattr(plan, "fixed", ())}
    weights = analysis.by_fqn()
    layers = _reallocated(specs, weights, fixed_reason, budget)
    n = np.array([ly.weight.numel for ly in layers], dtype=np.float64)
    params = int(n.sum())
    if target is None:
        targets = {ly.spec.target for ly in layers}
        target = targets.pop() if len(targets) == 1 else float((n * [ly.spec.target for ly in layers]).sum() / params)
    if not 0.0 <= target <= 1.0:
        raise BudgetError(f"budget {budget.method!r}: target sparsity {target!r} is outside [0, 1]")
    hi = budget.cap(target)
    lo = budget.min_sparsity
    if lo > hi:
        raise BudgetError(f"budget {budget.method!r}: min_sparsity={lo} is above max_sparsity={hi}")
    total = int(round(target * params))
    cmin = np.array([math.ceil(lo * ly.units - 1e-9) for ly in layers], dtype=np.int64)
    cmax = np.array([math.floor(hi * ly.units + 1e-9) for ly in layers], dtype=np.int64)
    g = np.array([ly.unit for ly in layers], dtype=np.int64)
    if (cmax * g).sum() < total or (cmin * g).sum() > total:
        raise BudgetError(
            f"budget {budget.method!r}: target sparsity {target:g} over {len(layers)} layers ({params} params) "
            f"cannot be met with per-layer sparsity in [{lo:g}, {hi:g}] (budget.min_sparsity / "
            f"budget.max_sparsity): they allow {(cmin * g).sum() / params:.4f} to {(cmax * g).sum() / params:.4f}"
        )

    scores: list[float | None] = [None] * len(layers)
    score_name = ""
    if budget.method == "global":
        counts, score_name = global_counts(layers, budget, program, stats, total, cmin, cmax, g)
    else:
        if budget.method == "uniform":
            s = uniform_sparsities(n, lo, hi, total)
        elif budget.method == "erk":
            s, scores, score_name = erk_sparsities(layers, n, budget, lo, hi, total)
        elif budget.method == "owl":
            s, scores, score_name = owl_sparsities(layers, n, budget, target, program, stats, lo, hi, total, progress)
        elif budget.method == "ecoflap":
            s, scores, score_name = ecoflap_sparsities(layers, n, budget, program, calibration, loss, lo, hi, total,
                                                       progress)
        elif budget.method == "sensitivity":
            s, scores, score_name = sensitivity_sparsities(layers, n, budget, target, program, stats, calibration,
                                                           loss, lo, hi, total, progress)
        else:  # parse_budget rejects it; a hand-built Budget may not
            raise BudgetError(f"unknown budget method {budget.method!r}; known: {', '.join(BUDGET_METHODS)}")
        counts = round_counts(s * n / g, cmin, cmax, g, total)
    new_specs, rows = _rows(specs, weights, layers, counts, scores, fixed_reason)
    return Allocation(
        budget=budget, target=float(target), specs=new_specs, layers=rows,
        params=params, target_pruned=total, pruned=int((counts * g).sum()), seconds=time.perf_counter() - t0,
        score_name=score_name,
    )


def _reallocated(specs: list[MaskSpec], weights: dict, fixed_reason: dict[str, str], budget: Budget) -> list[Layer]:
    """The layers the budget re-allocates; N:M and override-set layers go to ``fixed_reason``."""
    layers: list[Layer] = []
    for s in specs:
        if s.fqn not in weights:
            raise BudgetError(f"budget {budget.method!r}: {s.fqn} is not a prunable weight of the analysis")
        if s.pattern.kind == "nm":
            fixed_reason[s.fqn] = f"N:M pattern {s.pattern} has a fixed sparsity"
        if s.fqn in fixed_reason:
            continue
        w = weights[s.fqn]
        units, unit = units_of(s, w)
        group = block_of(s.fqn) if budget.method in ("owl", "ecoflap") and budget.granularity == "block" else s.fqn
        layers.append(Layer(s, w, units, unit, group))
    if not layers:
        why = "; ".join(f"{k}: {v}" for k, v in list(fixed_reason.items())[:4])
        raise BudgetError(f"budget {budget.method!r}: no layer left to re-allocate ({why})")
    return layers


def _rows(specs, weights, layers, counts, scores, fixed_reason) -> tuple[list[MaskSpec], list[LayerBudget]]:
    """The planned specs, in order, with their new targets, and one `LayerBudget` row each."""
    new: dict[str, MaskSpec] = {}
    rows: dict[str, LayerBudget] = {}
    for ly, c, sc in zip(layers, counts, scores):
        sparsity = int(c) / ly.units
        new[ly.spec.fqn] = dataclasses.replace(ly.spec, target=sparsity)
        rows[ly.spec.fqn] = LayerBudget(ly.spec.fqn, ly.spec.layer or ly.weight.layer, str(ly.spec.pattern),
                                        ly.weight.numel, ly.units, sparsity, int(c) * ly.unit, ly.group,
                                        None if sc is None else float(sc))
    out_rows = []
    for sp in specs:
        if sp.fqn in rows:
            out_rows.append(rows[sp.fqn])
        else:
            w = weights[sp.fqn]
            out_rows.append(LayerBudget(sp.fqn, sp.layer or w.layer, str(sp.pattern), w.numel, w.numel, sp.target,
                                        round(w.numel * sp.target), fixed=fixed_reason[sp.fqn]))
    return [new.get(sp.fqn, sp) for sp in specs], out_rows
