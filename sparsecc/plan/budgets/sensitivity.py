"""``sensitivity``: per-layer loss increase at a few levels, then the convexified minimum under the target."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from torch.export import ExportedProgram

from sparsecc.core.analyze import Analysis
from sparsecc.core.ir import MaskSpec
from sparsecc.plan.criteria import criterion_info
from sparsecc.plan.masks import compute_mask

from .common import Layer, LossFn, Progress, layer_scores, loss_fn, units_of, weight_reader
from .options import Budget, BudgetError

__all__ = ["SensitivityTable", "sensitivity_sweep", "sensitivity_sparsities"]


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
    loss = loss_fn(loss, "sensitivity")
    levels = tuple(sorted(set(float(x) for x in levels)))
    weights = analysis.by_fqn()
    todo = [s for s in specs if s.pattern.kind != "nm"]
    base = float(loss(program, calibration, None, max_batches))
    delta: dict[str, tuple[float, ...]] = {}
    steps = len(todo) * len(levels)
    read = weight_reader(program, "sensitivity")
    row_wise = criterion_info(scores).row_wise  # prune as the criterion itself would (Wanda: per row)
    for li, s in enumerate(todo):
        w = weights[s.fqn]
        units, unit = units_of(s, w)
        ly = Layer(s, w, units, unit, s.fqn)
        weight = read(s.fqn)
        sc = layer_scores(ly, weight, scores, stats, "sensitivity")
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


def sensitivity_sparsities(layers, n, budget, target, program, stats, calibration, loss, lo, hi, total, progress):
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


def _analysis_of(layers: list[Layer]) -> Analysis:
    return Analysis(weights=[ly.weight for ly in layers])
