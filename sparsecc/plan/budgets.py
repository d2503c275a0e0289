"""Layer-wise budgets: how much of each layer to prune so that the whole hits a target.

A recipe's ``sparsity`` is a global target; a budget decides how it is spread
over the planned layers. Methods (recipe key ``budget``):

- ``uniform``: every layer at the target.
- ``global``: one score threshold across layers, on the scores of a criterion
  (``scores``: magnitude by default, wanda with calibration statistics). Raw
  scores of different layers are compared as they are (``normalize: none``,
  the classic global magnitude pruning); ``normalize: rms`` divides each
  layer's scores by their root mean square first, so that a layer's scale
  does not decide its share. Block and channel units are ranked by the root
  mean square of their entries' scores, so units of different sizes compare.
- ``erk``: Erdős–Rényi-Kernel. Density ∝ (Σ dims) / (Π dims) of the weight's
  shape (raised to ``power``), rescaled to the target; layers whose density
  would exceed 1 stay dense and the rest are re-solved.
- ``owl``: outlier-weighted layerwise sparsity (Yin et al. 2023). A layer's
  (or block's) outlier ratio D is the fraction of its Wanda scores above
  ``m`` × their mean; sparsity = target + λ − 2λ·(D − min D)/(max D − min D),
  so in [target − λ, target + λ] with the most outlier-heavy layer densest,
  then shifted so that the parameter-weighted mean is the target.
- ``ecoflap``: ECoFLaP-style (Sung et al. 2023). A block's (or layer's) score
  is a zeroth-order estimate of the loss gradient's size along a random
  direction, |L(W + εz) − L(W − εz)| / 2ε (two forward passes per draw of z);
  every block keeps at least (1 − max_sparsity) of its weights and the rest
  of the kept weights are shared in proportion to the scores.
- ``sensitivity``: each layer alone is pruned at a few ``levels`` and the
  calibration loss increase is measured (`sensitivity_sweep`, or a table
  saved by ``sparsecc sensitivity``); sparsities then minimise the summed
  (convexified, piecewise-linear) loss increase under the target, so less
  sensitive layers get more sparsity.

Every method hits the target exactly: the planned layers' pruned counts
(a layer prunes ``round(units × sparsity)`` units, as `sparsecc.masks.pruned_units`)
sum to ``round(target × params)``. Continuous sparsities are turned into
integer counts by a largest-remainder step and each layer's sparsity is set
to count / units. With block or channel patterns a layer prunes whole units,
so the total is the achievable count nearest to the target (off by less than
one unit). N:M layers have the sparsity of their pattern and layers whose
sparsity a recipe override sets keep it; both are left out of the
re-allocation and the target is met over the other layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import Analysis, PrunableWeight
from sparsecc.plan.criteria import CRITERIA, CriterionContext, criterion_info, get_criterion
from sparsecc.plan.criteria import needs_calibration as criterion_needs
from sparsecc.core.ir import MaskSpec, get_node_info
from sparsecc.plan.masks import compute_mask
from sparsecc.core.program import placeholders_by_target, state_tensor
from sparsecc.errors import UsageError

__all__ = [
    "BUDGET_METHODS",
    "Budget",
    "BudgetError",
    "LayerBudget",
    "Allocation",
    "SensitivityTable",
    "parse_budget",
    "allocate",
    "needs_stats",
    "needs_calibration",
    "needs_program",
    "sensitivity_sweep",
    "erk_coefficient",
    "block_of",
]

BUDGET_METHODS = ("uniform", "global", "erk", "owl", "ecoflap", "sensitivity")

LossFn = Callable[..., float]
Progress = Callable[[int, int, str], None]


class BudgetError(UsageError, ValueError):
    """A budget cannot be met (target beyond the caps, missing inputs)."""


@dataclass(frozen=True)
class Budget:
    """A layer-wise budget: the method and its options.

    Options apply to some methods only (`parse_budget` rejects the others):

    - ``max_sparsity`` / ``min_sparsity`` (all): bounds on every re-allocated
      layer. ``max_sparsity`` defaults to 1.0, except ``global`` (0.95) and
      ``ecoflap`` (target + 0.1, as in its paper's runs).
    - ``scores`` (global, owl, sensitivity): criterion that scores entries;
      defaults: magnitude (global, sensitivity), wanda (owl).
    - ``normalize`` (global): ``none`` or ``rms``.
    - ``power`` (erk): exponent on the ERK coefficient (1 is ERK).
    - ``outlier_m``, ``lam`` (owl; recipe keys ``m`` and ``lambda``).
    - ``granularity`` (owl, ecoflap): ``block`` (default: the weights under
      one numbered module, e.g. ``model.layers.3``, share a sparsity) or ``layer``.
    - ``eps``, ``samples``, ``aggregate`` (ecoflap): perturbation size, random
      directions per block, ``sum`` (score as estimated) or ``mean`` (per parameter).
    - ``levels``, ``table`` (sensitivity): sparsities of the sweep; a JSON
      table written by ``sparsecc sensitivity`` to use instead of sweeping.
    - ``max_batches`` (ecoflap, sensitivity): calibration batches per loss.
    - ``seed`` (ecoflap): random directions.
    """

    method: str = "uniform"
    max_sparsity: float | None = None
    min_sparsity: float = 0.0
    scores: str | None = None
    normalize: str = "none"
    power: float = 1.0
    outlier_m: float = 5.0
    lam: float = 0.08
    granularity: str = "block"
    eps: float = 1e-3
    samples: int = 1
    aggregate: str = "sum"
    levels: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    table: str | None = None
    max_batches: int | None = None
    seed: int = 0

    def cap(self, target: float) -> float:
        """The largest sparsity a layer may get."""
        if self.max_sparsity is not None:
            return self.max_sparsity
        if self.method == "global":
            return 0.95
        if self.method == "ecoflap":
            return min(1.0, target + 0.1)
        return 1.0

    @property
    def score_criterion(self) -> str:
        return self.scores or ("wanda" if self.method == "owl" else "magnitude")

    def to_dict(self) -> dict[str, Any]:
        """Recipe form: the method and the options that differ from their defaults."""
        d: dict[str, Any] = {"method": self.method}
        default = Budget(self.method)
        for key, fname in _KEY_TO_FIELD.items():
            value = getattr(self, fname)
            if self.method in _OPTION_METHODS[key] and value != getattr(default, fname):
                d[key] = list(value) if isinstance(value, tuple) else value
        return d


# recipe key -> Budget field, and the methods each option applies to.
_KEY_TO_FIELD = {
    "max_sparsity": "max_sparsity", "min_sparsity": "min_sparsity", "scores": "scores",
    "normalize": "normalize", "power": "power", "m": "outlier_m", "lambda": "lam",
    "granularity": "granularity", "eps": "eps", "samples": "samples", "aggregate": "aggregate",
    "levels": "levels", "table": "table", "max_batches": "max_batches", "seed": "seed",
}
_ALL = frozenset(BUDGET_METHODS)
_OPTION_METHODS: dict[str, frozenset[str]] = {
    "max_sparsity": _ALL, "min_sparsity": _ALL,
    "scores": frozenset({"global", "owl", "sensitivity"}),
    "normalize": frozenset({"global"}),
    "power": frozenset({"erk"}),
    "m": frozenset({"owl"}), "lambda": frozenset({"owl"}),
    "granularity": frozenset({"owl", "ecoflap"}),
    "eps": frozenset({"ecoflap"}), "samples": frozenset({"ecoflap"}), "aggregate": frozenset({"ecoflap"}),
    "levels": frozenset({"sensitivity"}), "table": frozenset({"sensitivity"}),
    "max_batches": frozenset({"ecoflap", "sensitivity"}),
    "seed": frozenset({"ecoflap"}),
}


def parse_budget(value: Any, key: str = "budget") -> Budget:
    """A `Budget` from a recipe value: a method name or ``{method: ..., option: ...}``.

    Raises `sparsecc.recipe.RecipeError` naming the key and the value at fault.
    """
    from sparsecc.plan.recipe import RecipeError

    if isinstance(value, Budget):
        return value
    if value is None:  # an empty `budget:` in YAML
        return Budget()
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, dict):
        raise RecipeError(key, value, f"must be a method name ({', '.join(BUDGET_METHODS)}) or a mapping")
    method = value.get("method")
    if method not in BUDGET_METHODS:
        raise RecipeError(f"{key}.method", method, f"is not a known budget method; known: {', '.join(BUDGET_METHODS)}")
    fields: dict[str, Any] = {"method": method}
    for k, v in value.items():
        if k == "method":
            continue
        if k not in _KEY_TO_FIELD:
            raise RecipeError(f"{key}.{k}", v, f"is not a known key; known: method, {', '.join(sorted(_KEY_TO_FIELD))}")
        if method not in _OPTION_METHODS[k]:
            own = sorted(o for o, ms in _OPTION_METHODS.items() if method in ms)
            raise RecipeError(f"{key}.{k}", v, f"does not apply to budget method {method!r}; its options: {', '.join(own)}")
        fields[_KEY_TO_FIELD[k]] = _check_option(k, v, f"{key}.{k}", RecipeError)
    budget = Budget(**fields)
    if budget.max_sparsity is not None and budget.min_sparsity > budget.max_sparsity:
        raise RecipeError(f"{key}.min_sparsity", budget.min_sparsity, f"is above {key}.max_sparsity={budget.max_sparsity}")
    return budget


def _check_option(k: str, v: Any, key: str, err: type) -> Any:
    def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise err(key, v, "must be a number")
        if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
            raise err(key, v, f"is outside {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return float(v)

    def integer(lo: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise err(key, v, f"must be an integer >= {lo}")
        return v

    if k == "max_sparsity":
        return number(0.0, 1.0, lo_open=True)
    if k == "min_sparsity":
        return number(0.0, 1.0, hi_open=True)
    if k == "scores":
        known = sorted(c for c in CRITERIA if criterion_info(c).kind == "score")
        if v not in known:
            raise err(key, v, f"is not a criterion that scores entries; known: {', '.join(known)}")
        return str(v)
    if k in ("normalize", "granularity", "aggregate"):
        allowed = {"normalize": ("none", "rms"), "granularity": ("block", "layer"), "aggregate": ("sum", "mean")}[k]
        if v not in allowed:
            raise err(key, v, f"must be one of: {', '.join(allowed)}")
        return v
    if k == "power":
        return number(0.0, 10.0)
    if k == "m":
        return number(0.0, math.inf, lo_open=True)
    if k == "lambda":
        return number(0.0, 1.0)
    if k == "eps":
        return number(0.0, 1.0, lo_open=True)
    if k in ("samples", "max_batches"):
        return integer(1)
    if k == "seed":
        return integer(0)
    if k == "levels":
        if not isinstance(v, (list, tuple)) or not v:
            raise err(key, v, "must be a non-empty list of sparsities in (0, 1]")
        levels = tuple(sorted(set(_check_option("max_sparsity", x, key, err) for x in v)))
        return levels
    if k == "table":
        if not isinstance(v, str) or not v:
            raise err(key, v, "must be the path of a sensitivity table (JSON)")
        return v
    raise AssertionError(k)


def needs_stats(budget: Budget) -> frozenset[str]:
    """The calibration statistics `allocate` needs for ``budget`` (``act_sq`` for OWL); empty: none."""
    if budget.method in ("global", "owl") or (budget.method == "sensitivity" and budget.table is None):
        return criterion_needs(budget.score_criterion)
    return frozenset()


def needs_calibration(budget: Budget) -> bool:
    """Whether `allocate` runs the calibration loss (``calibration`` data and the program)."""
    return budget.method == "ecoflap" or (budget.method == "sensitivity" and budget.table is None)


def needs_program(budget: Budget) -> bool:
    """Whether `allocate` reads the weights (``program``)."""
    return budget.method in ("global", "owl") or needs_calibration(budget)


# -- results ---------------------------------------------------------------------


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


# -- the allocator ------------------------------------------------------------------


@dataclass
class _Layer:
    spec: MaskSpec
    weight: PrunableWeight
    units: int
    unit: int  # params per unit
    group: str


def erk_coefficient(shape: Sequence[int]) -> float:
    """(Σ dims) / (Π dims): ERK's density is proportional to it."""
    return sum(shape) / math.prod(shape)


def block_of(fqn: str) -> str:
    """The numbered module a weight belongs to (``model.layers.3``), or its layer name.

    OWL and ECoFLaP allocate per transformer block; blocks are found from the
    names, up to the first all-digit component.
    """
    parts = fqn.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return fqn.rsplit(".", 1)[0] if fqn.endswith(".weight") else fqn


def _units(spec: MaskSpec, w: PrunableWeight) -> tuple[int, int]:
    p = spec.pattern
    if p.kind == "block":
        r, c = p.block  # type: ignore[misc]
        return w.numel // (r * c), r * c
    if p.kind == "channel":
        return w.out_size, w.numel // w.out_size
    return w.numel, 1


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
    layers: list[_Layer] = []
    for s in specs:
        if s.fqn not in weights:
            raise BudgetError(f"budget {budget.method!r}: {s.fqn} is not a prunable weight of the analysis")
        if s.pattern.kind == "nm":
            fixed_reason[s.fqn] = f"N:M pattern {s.pattern} has a fixed sparsity"
        if s.fqn in fixed_reason:
            continue
        w = weights[s.fqn]
        units, unit = _units(s, w)
        group = block_of(s.fqn) if budget.method in ("owl", "ecoflap") and budget.granularity == "block" else s.fqn
        layers.append(_Layer(s, w, units, unit, group))
    if not layers:
        why = "; ".join(f"{k}: {v}" for k, v in list(fixed_reason.items())[:4])
        raise BudgetError(f"budget {budget.method!r}: no layer left to re-allocate ({why})")

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
        counts, score_name = _global_counts(layers, budget, program, stats, total, cmin, cmax, g)
    else:
        if budget.method == "uniform":
            s = _solve(n, np.zeros_like(n), np.ones_like(n), lo, hi, total)
        elif budget.method == "erk":
            coef = np.array([erk_coefficient(ly.weight.shape) ** budget.power for ly in layers])
            scores, score_name = list(coef), "erk coefficient"
            s = _solve(n, np.ones_like(n), coef, lo, hi, total)  # sparsity 1 - ε·coef, ε = -t
        elif budget.method == "owl":
            s, scores, score_name = _owl(layers, n, budget, target, program, stats, lo, hi, total, progress)
        elif budget.method == "ecoflap":
            s, scores, score_name = _ecoflap(layers, n, budget, program, calibration, loss, lo, hi, total, progress)
        elif budget.method == "sensitivity":
            s, scores, score_name = _sensitivity(layers, n, budget, target, program, stats, calibration, loss,
                                                 lo, hi, total, progress)
        else:  # parse_budget rejects it; a hand-built Budget may not
            raise BudgetError(f"unknown budget method {budget.method!r}; known: {', '.join(BUDGET_METHODS)}")
        counts = _round_counts(s * n / g, cmin, cmax, g, total)

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
    return Allocation(
        budget=budget, target=float(target), specs=[new.get(sp.fqn, sp) for sp in specs], layers=out_rows,
        params=params, target_pruned=total, pruned=int((counts * g).sum()), seconds=time.perf_counter() - t0,
        score_name=score_name,
    )


def _solve(n: np.ndarray, a: np.ndarray, b: np.ndarray, lo: float, hi: float, total: float) -> np.ndarray:
    """Sparsities s_i = clip(a_i + b_i·t, lo, hi) (b_i ≥ 0) with Σ n_i s_i = total.

    The sum is piecewise linear and non-decreasing in t, with a kink wherever
    a layer reaches a bound; find the piece that holds ``total`` and solve it
    exactly. Layers clipped at a bound are the ones the iterative ERK solve
    would mark dense (or capped) before re-solving the rest.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    moving = b > 0
    if not moving.any():
        return np.clip(a, lo, hi)
    kinks = np.unique(np.concatenate([(lo - a[moving]) / b[moving], (hi - a[moving]) / b[moving]]))
    sums = np.empty(len(kinks))
    for start in range(0, len(kinks), 512):  # bounded memory for many layers
        chunk = kinks[start:start + 512]
        sums[start:start + len(chunk)] = np.clip(a[None, :] + b[None, :] * chunk[:, None], lo, hi) @ n
    sums = np.maximum.accumulate(sums)  # exact monotonicity despite rounding
    i = int(np.searchsorted(sums, total))
    if i == 0:
        t = kinks[0]
    elif i == len(kinks):
        t = kinks[-1]
    else:
        t0, t1, v0, v1 = kinks[i - 1], kinks[i], sums[i - 1], sums[i]
        t = t1 if v1 <= v0 else t0 + (total - v0) * (t1 - t0) / (v1 - v0)
    return np.clip(a + b * t, lo, hi)


def _round_counts(x: np.ndarray, cmin: np.ndarray, cmax: np.ndarray, g: np.ndarray, total: int) -> np.ndarray:
    """Integer unit counts near ``x`` with Σ count·unit == total (largest remainder).

    Units of one parameter (unstructured) always reach ``total`` exactly;
    with larger units the result is the achievable total nearest to it.
    """
    c = np.clip(np.floor(x + 1e-9), cmin, cmax).astype(np.int64)
    rest = total - int((c * g).sum())
    rem = x - c
    for _ in range(4):
        if rest < 0:  # float slack overshot: take back from the smallest remainders
            for i in np.argsort(rem, kind="stable"):
                while rest < 0 and c[i] > cmin[i]:
                    c[i] -= 1
                    rest += int(g[i])
                    rem[i] += 1
                if rest >= 0:
                    break
        progressed = True
        while rest > 0 and progressed:
            progressed = False
            for i in np.argsort(-rem, kind="stable"):
                if rest <= 0:
                    break
                if c[i] < cmax[i] and g[i] <= rest:
                    c[i] += 1
                    rest -= int(g[i])
                    rem[i] -= 1
                    progressed = True
        if rest >= 0:
            break
    if rest > 0:  # no whole unit fits: overshoot by one unit when that is nearer
        room = np.nonzero((c < cmax) & (g < 2 * rest))[0]
        if len(room):
            i = room[np.argmin(g[room])]
            c[i] += 1
    return c


# -- weights and scores --------------------------------------------------------------


def _weight_reader(program: ExportedProgram | None, method: str) -> Callable[[str], torch.Tensor]:
    """``fqn -> weight`` as the program computes with it (masked, if a mask is in place)."""
    if program is None:
        raise BudgetError(f"budget {method!r} reads the weights: pass program=")
    nodes = placeholders_by_target(program)

    def read(fqn: str) -> torch.Tensor:
        w = state_tensor(program, fqn).detach()
        info = get_node_info(nodes[fqn])
        if info is not None and info.mask is not None:
            w = w * state_tensor(program, info.mask)
        return w

    return read


def _scores(ly: _Layer, weight: torch.Tensor, criterion: str, stats: dict | None, method: str) -> torch.Tensor:
    layer_stats = (stats or {}).get(ly.spec.fqn, {})
    if criterion_needs(criterion) and not layer_stats:
        raise BudgetError(
            f"budget {method!r} scores with {criterion!r}, which needs calibration statistics, "
            f"and there are none for {ly.spec.fqn}: pass stats= (see sparsecc.calibrate)"
        )
    ctx = CriterionContext(ly.spec.fqn, ly.weight.output_axis, ly.weight.reduction_axis, layer_stats)
    return get_criterion(criterion)(weight, ctx).detach().float()


def _unit_scores(ly: _Layer, scores: torch.Tensor) -> torch.Tensor:
    """One score per unit: the entry itself, or the RMS of a block's / channel's entries."""
    p = ly.spec.pattern
    if p.kind == "unstructured":
        return scores.reshape(-1)
    from sparsecc.core.analyze import as_matrix

    mat = as_matrix(scores, ly.weight.output_axis, ly.weight.reduction_axis)
    mat = mat.reshape(mat.shape[0], -1).square()
    if p.kind == "channel":
        return mat.mean(1).sqrt()
    r, c = p.block  # type: ignore[misc]
    rows, cols = mat.shape
    return mat.reshape(rows // r, r, cols // c, c).mean((1, 3)).sqrt().reshape(-1)


def _global_counts(layers, budget, program, stats, total, cmin, cmax, g) -> tuple[np.ndarray, str]:
    """One threshold on (optionally normalised) unit scores across all layers."""
    crit = budget.score_criterion
    weight = _weight_reader(program, "global")
    ranked: list[torch.Tensor] = []
    for ly in layers:
        u = _unit_scores(ly, _scores(ly, weight(ly.spec.fqn), crit, stats, "global"))
        if budget.normalize == "rms":
            u = u / u.square().mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
        ranked.append(torch.sort(u).values)

    def counts_le(tau: float) -> np.ndarray:
        c = np.array([int(torch.searchsorted(r, torch.tensor([tau]), right=True)) for r in ranked], dtype=np.int64)
        return np.clip(c, cmin, cmax)

    lo_t = -math.inf
    hi_t = max(float(r[-1]) for r in ranked)
    if int((counts_le(hi_t) * g).sum()) <= total:
        lo_t = hi_t
    else:
        lo_t = min(float(r[0]) for r in ranked) - 1.0
        for _ in range(200):  # pruned(lo_t) <= total < pruned(hi_t)
            mid = (lo_t + hi_t) / 2
            if mid in (lo_t, hi_t):
                break
            if int((counts_le(mid) * g).sum()) <= total:
                lo_t = mid
            else:
                hi_t = mid
            between = (np.minimum(counts_le(hi_t), cmax) - counts_le(lo_t)).sum()
            if between <= 4096:
                break
    c = counts_le(lo_t)
    rest = total - int((c * g).sum())
    if rest > 0:  # the units just above the threshold, lowest first, while they fit
        cand = []
        for i, r in enumerate(ranked):
            end = min(int(torch.searchsorted(r, torch.tensor([hi_t]), right=True)), int(cmax[i]))
            cand += [(float(v), i) for v in r[c[i]:end].tolist()]
        for _, i in sorted(cand):
            if rest <= 0:
                break
            if c[i] < cmax[i] and g[i] <= rest:
                c[i] += 1
                rest -= int(g[i])
    # Whatever a unit size leaves over goes to the layers with room, nearest as the rounding does.
    c = _round_counts(c.astype(np.float64), cmin, cmax, g, total)
    return c, f"{crit} ({'raw' if budget.normalize == 'none' else 'rms-normalised'})"


def _groups(layers: list[_Layer]) -> tuple[list[str], np.ndarray]:
    names: list[str] = []
    index: dict[str, int] = {}
    of = np.empty(len(layers), dtype=np.int64)
    for i, ly in enumerate(layers):
        if ly.group not in index:
            index[ly.group] = len(names)
            names.append(ly.group)
        of[i] = index[ly.group]
    return names, of


def _owl(layers, n, budget, target, program, stats, lo, hi, total, progress):
    """Outlier ratios per group, mapped to [target − λ, target + λ], shifted to the target."""
    names, of = _groups(layers)
    ratio = np.zeros(len(names))
    crit = budget.score_criterion
    weight = _weight_reader(program, "owl")
    for gi, name in enumerate(names):
        if progress:
            progress(gi, len(names), name)
        members = [ly for ly, o in zip(layers, of) if o == gi]
        scores = [_scores(ly, weight(ly.spec.fqn), crit, stats, "owl").reshape(-1) for ly in members]
        mean = sum(float(s.double().sum()) for s in scores) / sum(s.numel() for s in scores)
        above = sum(int((s > budget.outlier_m * mean).sum()) for s in scores)
        ratio[gi] = above / sum(s.numel() for s in scores)
    if progress:
        progress(len(names), len(names), "")
    spread = ratio.max() - ratio.min()
    norm = (ratio - ratio.min()) / spread if spread > 0 else np.full_like(ratio, 0.5)
    base = target + budget.lam - 2 * budget.lam * norm
    ng = np.bincount(of, weights=n, minlength=len(names))
    s = _solve(ng, base, np.ones_like(base), lo, hi, total)
    return s[of], list(ratio[of]), f"outlier ratio (share of {crit} scores > {budget.outlier_m:g}x mean)"


def _loss_fn(loss: LossFn | None, method: str) -> LossFn:
    if loss is not None:
        return loss
    try:
        from sparsecc.plan.calibrate import objective_loss  # type: ignore[attr-defined]
    except ImportError as e:
        raise BudgetError(f"budget {method!r} needs sparsecc.calibrate.objective_loss: {e}") from None
    return objective_loss


def _ecoflap(layers, n, budget, program, calibration, loss, lo, hi, total, progress):
    """Zeroth-order block scores; kept weights beyond the floor shared in proportion to them."""
    if calibration is None:
        raise BudgetError("budget 'ecoflap' runs the calibration loss: pass calibration= (sparsecc.calibrate.CalibrationData)")
    loss = _loss_fn(loss, "ecoflap")
    names, of = _groups(layers)
    read = _weight_reader(program, "ecoflap")
    weights = {ly.spec.fqn: read(ly.spec.fqn) for ly in layers}
    score = np.zeros(len(names))
    steps = len(names) * budget.samples
    for gi, name in enumerate(names):
        members = [ly.spec.fqn for ly, o in zip(layers, of) if o == gi]
        for k in range(budget.samples):
            if progress:
                progress(gi * budget.samples + k, steps, name)
            gen = torch.Generator().manual_seed(budget.seed * 1_000_003 + gi * 131 + k)
            z = {f: torch.randn(weights[f].shape, generator=gen, dtype=weights[f].dtype) for f in members}
            plus = loss(program, calibration, {f: weights[f] + budget.eps * z[f] for f in members}, budget.max_batches)
            minus = loss(program, calibration, {f: weights[f] - budget.eps * z[f] for f in members}, budget.max_batches)
            score[gi] += abs(float(plus) - float(minus)) / (2 * budget.eps)
    if progress:
        progress(steps, steps, "")
    score /= budget.samples
    ng = np.bincount(of, weights=n, minlength=len(names))
    if budget.aggregate == "mean":
        score = score / ng
    # kept = ng·(1 − hi) + α·score, i.e. sparsity = hi − α·score/ng (α = −t).
    s = _solve(ng, np.full(len(names), hi), score / ng, lo, hi, total)
    return s[of], list(score[of]), f"zeroth-order |dL| along random directions (eps={budget.eps:g}, {budget.aggregate})"


# -- sensitivity ----------------------------------------------------------------------


@dataclass
class SensitivityTable:
    """Calibration-loss increase when one layer alone is pruned at each level."""

    levels: tuple[float, ...]
    base_loss: float
    delta: dict[str, tuple[float, ...]]
    params: dict[str, int] = field(default_factory=dict)
    scores: str = "magnitude"
    model: str = ""

    def at(self, fqn: str, sparsity: float) -> float:
        """Loss increase of ``fqn`` at ``sparsity``, linear between levels (0 at 0)."""
        return float(np.interp(sparsity, (0.0, *self.levels), (0.0, *self.delta[fqn])))

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "base_loss": self.base_loss, "scores": self.scores,
                "model": self.model, "params": self.params, "delta": {k: list(v) for k, v in self.delta.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SensitivityTable":
        levels = tuple(float(x) for x in d["levels"])
        delta = {k: tuple(float(x) for x in v) for k, v in d["delta"].items()}
        bad = [k for k, v in delta.items() if len(v) != len(levels)]
        if bad:
            raise ValueError(f"sensitivity table: {bad[0]} has {len(delta[bad[0]])} values for {len(levels)} levels")
        return cls(levels, float(d["base_loss"]), delta, {k: int(v) for k, v in d.get("params", {}).items()},
                   d.get("scores", "magnitude"), d.get("model", ""))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a temp file renamed into place)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityTable":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"sensitivity table not found: {path}") from None
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a sensitivity table: {e}") from None


def sensitivity_sweep(
    program: ExportedProgram,
    specs: Sequence[MaskSpec],
    analysis: Analysis,
    calibration: Any,
    *,
    levels: Iterable[float] = Budget.levels,
    scores: str = "magnitude",
    stats: dict[str, dict] | None = None,
    loss: LossFn | None = None,
    max_batches: int | None = None,
    progress: Progress | None = None,
    model: str = "",
) -> SensitivityTable:
    """Prune each planned layer alone at each level (its pattern, ``scores``'
    criterion) and record the calibration loss increase over the dense loss.

    Costs one loss evaluation per layer and level, plus one.
    """
    loss = _loss_fn(loss, "sensitivity")
    levels = tuple(sorted(set(float(x) for x in levels)))
    weights = analysis.by_fqn()
    todo = [s for s in specs if s.pattern.kind != "nm"]
    base = float(loss(program, calibration, None, max_batches))
    delta: dict[str, tuple[float, ...]] = {}
    steps = len(todo) * len(levels)
    read = _weight_reader(program, "sensitivity")
    row_wise = criterion_info(scores).row_wise  # prune as the criterion itself would (Wanda: per row)
    for li, s in enumerate(todo):
        w = weights[s.fqn]
        units, unit = _units(s, w)
        ly = _Layer(s, w, units, unit, s.fqn)
        weight = read(s.fqn)
        sc = _scores(ly, weight, scores, stats, "sensitivity")
        row = []
        for k, level in enumerate(levels):
            if progress:
                progress(li * len(levels) + k, steps, f"{s.fqn} @ {level:g}")
            mask = compute_mask(sc, s.pattern, level, w.output_axis, w.reduction_axis, row_wise=row_wise)
            row.append(float(loss(program, calibration, {s.fqn: weight * mask}, max_batches)) - base)
        delta[s.fqn] = tuple(row)
    if progress:
        progress(steps, steps, "")
    return SensitivityTable(levels, base, delta, {s.fqn: weights[s.fqn].numel for s in todo}, scores, model)


def _sensitivity(layers, n, budget, target, program, stats, calibration, loss, lo, hi, total, progress):
    """Minimise Σ ΔL_l(s_l) subject to Σ n_l s_l = total, ΔL convexified and piecewise linear.

    With each layer's curve replaced by its lower convex hull, filling hull
    segments in order of increasing loss per pruned parameter is optimal.
    """
    if budget.table is not None:
        table = SensitivityTable.load(budget.table)
        missing = [ly.spec.fqn for ly in layers if ly.spec.fqn not in table.delta]
        if missing:
            raise BudgetError(f"budget.table {budget.table!r} has no row for {missing[0]} ({len(missing)} layers missing)")
    else:
        if calibration is None:
            raise BudgetError("budget 'sensitivity' runs the calibration loss: pass calibration= or set budget.table")
        table = sensitivity_sweep(program, [ly.spec for ly in layers], _analysis_of(layers), calibration,
                                  levels=budget.levels, scores=budget.score_criterion, stats=stats, loss=loss,
                                  max_batches=budget.max_batches, progress=progress)
    top = min(hi, max(table.levels))
    if top < lo or (n * top).sum() < total - 0.5:
        raise BudgetError(
            f"budget 'sensitivity': target {target:g} needs layers above the largest measured level "
            f"{max(table.levels):g} (budget.levels) or budget.max_sparsity={hi:g}"
        )
    x = np.array([lo * ni for ni in n])  # pruned params so far
    segments = []  # (cost per param, layer, order, params)
    for i, ly in enumerate(layers):
        pts = sorted({lo, top, *[v for v in table.levels if lo < v < top]})
        cost = [table.at(ly.spec.fqn, v) for v in pts]
        hull = _lower_hull(pts, cost)
        for j in range(len(hull) - 1):
            (s0, c0), (s1, c1) = hull[j], hull[j + 1]
            segments.append(((c1 - c0) / (n[i] * (s1 - s0)), i, j, n[i] * (s1 - s0)))
    rest = total - x.sum()
    for _, i, _, size in sorted(segments):
        if rest <= 0:
            break
        take = min(size, rest)
        x[i] += take
        rest -= take
    s = x / n
    ref = min(table.levels, key=lambda v: abs(v - target))
    return s, [table.at(ly.spec.fqn, ref) for ly in layers], f"loss increase at {ref:g} sparsity"


def _lower_hull(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _analysis_of(layers: list[_Layer]) -> Analysis:
    return Analysis(weights=[ly.weight for ly in layers])
