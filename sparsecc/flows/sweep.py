"""Quality against sparsity: a criterion x pattern x sparsity grid, evaluated on real data.

`sweep` captures the model once, evaluates the dense program, then for each
grid point prunes it with `sparsecc.sparsify` (recipe = the base recipe with
``pattern``, ``sparsity`` and ``criterion`` replaced) and evaluates the
sparse program with `sparsecc.evaluate` on the task's primary metric.
Calibrated criteria (those `sparsecc.criteria.needs_calibration` names) get
``calibration=CalibrationData(calibration_inputs(spec, samples, seq_len))``,
built once per sweep.

N:M patterns fix their sparsity, so they contribute one point each, however
many sparsities the grid has. Unstructured, block and channel patterns take
every sparsity of the grid.

**Essential sparsity.** For each (criterion, pattern) curve, the quality
drop against dense is ``(q - dense) / dense`` for lower-is-better metrics
(perplexity) and ``(dense - q) / |dense|`` otherwise. The curve *falls off*
at the first sparsity whose drop exceeds ``tolerance`` (default 5%); its
essential sparsity is the largest sparsity before that point whose drop is
within the tolerance.

Outputs (`write_sweep`, atomic): ``sweep.json``, ``sweep.md`` (the table and
the essential sparsities), ``sweep.png`` (quality vs sparsity, dense as a
dashed line, the tolerance as a dotted one).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsecc.bundle.staging import staged_output
from sparsecc.core.capture import capture
from sparsecc.core.ir import SparsityPattern
from sparsecc.core.machine import cpu_info
from sparsecc.flows.sparsify import recipe_calibration, sparsify
from sparsecc.plan.calibrate import calibration_for
from sparsecc.core.analyze import find_prunable_weights
from sparsecc.plan.activation_stats import collect_stats
from sparsecc.plan.criteria import get_criterion, needs_calibration
from sparsecc.plan.recipe import RecipeError, load_recipe, plan_masks
from sparsecc.quality.evaluate import (
    TASKS,
    EvalError,
    EvalOptions,
    _spec,
    default_tasks,
    evaluate,
    reference_outputs,
)

__all__ = ["SweepPoint", "SweepResult", "sweep", "write_sweep", "sparsify_with_calibration",
           "quality_drop", "essential_sparsity", "shared_calibration", "sweep_point"]

Progress = Callable[[str, int, int], None]


@dataclass
class SweepPoint:
    criterion: str
    pattern: str
    sparsity: float  # the recipe's target (N:M: implied by the pattern)
    achieved: float  # zeros / prunable params actually reached
    metrics: dict[str, float]
    quality: float  # the task's primary metric
    drop: float  # relative quality drop against dense (see quality_drop)
    prune_s: float
    eval_s: float
    error: str = ""


@dataclass
class SweepResult:
    model: str
    task: str
    metric: str
    higher_is_better: bool
    dense: dict[str, float]
    points: list[SweepPoint]
    tolerance: float
    recipe: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dense_quality(self) -> float:
        return self.dense[self.metric]

    def curves(self) -> dict[tuple[str, str], list[SweepPoint]]:
        out: dict[tuple[str, str], list[SweepPoint]] = {}
        for p in self.points:
            out.setdefault((p.criterion, p.pattern), []).append(p)
        return {k: sorted(v, key=lambda p: p.sparsity) for k, v in out.items()}

    def essential(self) -> dict[str, dict[str, Any]]:
        return {f"{c} {p}": essential_sparsity(pts, self.tolerance) for (c, p), pts in self.curves().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
            "dense": self.dense, "tolerance": self.tolerance, "recipe": self.recipe, "options": self.options,
            "points": [asdict(p) for p in self.points], "essential_sparsity": self.essential(),
            "machine": self.machine,
        }

    def markdown(self) -> str:
        lines = [f"# Sweep: {self.model}, {self.task} ({self.metric}, "
                 f"{'higher' if self.higher_is_better else 'lower'} is better)", ""]
        if self.machine:
            m = self.machine
            lines += [f"machine: {m.get('cpu', '?')}, load {m.get('load', '?')}; "
                      f"dense {self.metric} = {_fmt(self.dense_quality)}", ""]
        lines += [f"| criterion | pattern | target sparsity | achieved | {self.metric} | drop vs dense | prune s | eval s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|",
                  f"| dense | - | 0% | 0% | {_fmt(self.dense_quality)} | - | - | - |"]
        for (c, pat), pts in self.curves().items():
            for p in pts:
                q = "error: " + p.error[:60] if p.error else _fmt(p.quality)
                drop = "" if p.error else f"{p.drop:+.1%}"
                lines.append(f"| {c} | {pat} | {p.sparsity:.0%} | {p.achieved:.1%} | {q} | {drop} | "
                             f"{p.prune_s:.1f} | {p.eval_s:.1f} |")
        lines += ["", f"Essential sparsity (largest sparsity within {self.tolerance:.0%} of dense, "
                      "before the first point beyond it):", ""]
        lines += ["| criterion pattern | essential sparsity | falls off at |", "|---|---:|---:|"]
        for k, e in self.essential().items():
            es = "none" if e["essential"] is None else f"{e['essential']:.0%}"
            fo = "not in the grid" if e["falls_off_at"] is None else f"{e['falls_off_at']:.0%}"
            lines.append(f"| {k} | {es} | {fo} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> None:
        from sparsecc.benchmarking.plots import _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        for i, ((c, pat), pts) in enumerate(self.curves().items()):
            pts = [p for p in pts if not p.error]
            if not pts:
                continue
            xs, ys = [p.achieved * 100 for p in pts], [p.quality for p in pts]
            style = "-o" if len(pts) > 1 else "s"
            if len(pts) > 1:  # a curve starts at the dense model
                xs, ys = [0.0, *xs], [self.dense_quality, *ys]
            ax.plot(xs, ys, style, color=f"C{i % 10}", label=f"{c} {pat}", markersize=5)
        d = self.dense_quality
        ax.axhline(d, color="k", linestyle="--", linewidth=1, label=f"dense {_fmt(d)}")
        limit = d * (1 + self.tolerance) if not self.higher_is_better else d - abs(d) * self.tolerance
        ax.axhline(limit, color="grey", linestyle=":", linewidth=1, label=f"{self.tolerance:.0%} drop")
        if not self.higher_is_better and all(p.quality > 0 for p in self.points if not p.error):
            ax.set_yscale("log")
        ax.set_xlim(left=0)
        ax.set_xlabel("sparsity of the prunable weights (%)")
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.model}: {self.task}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.4g}" if abs(x) >= 10 else f"{x:.4f}"


def quality_drop(quality: float, dense: float, higher_is_better: bool) -> float:
    """Relative quality lost against dense: positive is worse."""
    if dense == 0:
        return float("inf") if quality != dense else 0.0
    return (dense - quality) / abs(dense) if higher_is_better else (quality - dense) / abs(dense)


def essential_sparsity(points: Sequence[SweepPoint], tolerance: float) -> dict[str, Any]:
    """The largest sparsity within ``tolerance`` before the curve first exceeds it, and where it does."""
    essential, falls = None, None
    for p in sorted(points, key=lambda p: p.sparsity):
        if p.error:
            continue
        if p.drop > tolerance:
            falls = p.sparsity
            break
        essential = p.sparsity
    return {"essential": essential, "falls_off_at": falls}


def sparsify_with_calibration(program: Any, spec: Any, recipe: Any, *, fold: bool = True,
                              progress: Callable[[int, int, str], None] | None = None,
                              calibration: Any = None) -> Any:
    """`sparsecc.sparsify`, with calibration data from `sparsecc.data` when the recipe needs it
    (`recipe_calibration`); pass ``calibration`` to reuse data built before."""
    rec = load_recipe(recipe)
    if calibration is None:
        calibration = recipe_calibration(spec, rec)
    return sparsify(program, rec, fold=fold, progress=progress, model_name=spec.name, calibration=calibration)


def _grid(patterns: Sequence[str], sparsities: Sequence[float]) -> list[tuple[str, float | None]]:
    out = []
    for pat in patterns:
        fixed = SparsityPattern.parse(pat).fixed_sparsity
        if fixed is not None:
            out.append((pat, None))
        else:
            out += [(pat, s) for s in sparsities]
    return out


def sweep(model: Any, *, criteria: Sequence[str] = ("magnitude",), patterns: Sequence[str] = ("unstructured",),
          sparsities: Sequence[float] = (0.3, 0.5, 0.7), task: str | None = None,
          recipe: dict[str, Any] | str | os.PathLike | None = None, tolerance: float = 0.05,
          options: EvalOptions | None = None, calibration_samples: int | None = None,
          progress: Progress | None = None, say: Callable[[str], None] | None = None,
          ray: str | None = None, ray_cpus: float = 1.0) -> SweepResult:
    """Evaluate ``model`` (zoo name, file reference or ModelSpec) dense and at every grid point.

    ``ray``: run the grid points as Ray tasks (``ray_cpus`` CPUs each) on the
    cluster at that address (``"local"``: start one here); see `sweep_ray`.
    The table is the one the points give run here, one after the other.
    """
    say = say or (lambda msg: None)
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    for s in sparsities:
        if not 0 < s < 1:
            raise ValueError(f"sparsities must be in (0, 1), got {s}")
    for c in criteria:
        get_criterion(c)  # unknown names fail before any work
    spec = _spec(model)
    task = task or (default_tasks(spec) or [None])[0]
    if task is None:
        raise EvalError(f"model {spec.name!r} has no evaluation task; sweeps need a real pretrained model")
    t = TASKS[task]
    opts = options or EvalOptions()
    base = load_recipe(recipe).to_dict() if recipe is not None else {"layers": {"min_params": 4096}}
    if calibration_samples is not None:
        base = {**base, "calibration": {**(base.get("calibration") or {}), "samples": int(calibration_samples)}}
    grid = [(c, p, s) for c in criteria for p, s in _grid(patterns, sparsities)]

    say(f"capturing {spec.name}")
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    say("evaluating the dense model")
    ref_raw = reference_outputs(task, spec, options=opts, progress=_sub(progress, "dense"))
    dense = evaluate(program, task, model=spec, options=opts, reference_raw=ref_raw,
                     progress=_sub(progress, "dense program")).metrics
    calibration, stats = shared_calibration(program, spec, base, criteria, [p for p, _ in _grid(patterns, sparsities)],
                                            say)
    if ray is None:
        points = []
        for i, (crit, pat, s) in enumerate(grid):
            say(f"[{i + 1}/{len(grid)}] {_label(crit, pat, s)}")
            points.append(sweep_point(program, spec, base, crit, pat, s, task, opts, ref_raw, dense,
                                      calibration, stats, progress=_sub(progress, _label(crit, pat, s)), say=say))
    else:
        from sparsecc.flows.sweep_ray import ray_points

        got = ray_points(sweep_point, ray, model, grid, base, task, opts, ref_raw, dense, calibration, stats,
                         num_cpus=ray_cpus, say=say)
        points = [p if not isinstance(p, Exception) else
                  SweepPoint(c, pat, s if s is not None else float("nan"), float("nan"), {}, float("nan"),
                             float("nan"), 0.0, 0.0, f"Ray task failed: {p}") for (c, pat, s), p in zip(grid, got)]
    machine = {"cpu": f"{cpu_info()[0]} ({os.cpu_count()} cores)", "load": round(os.getloadavg()[0], 2)}
    return SweepResult(spec.name, task, t.primary, t.higher_is_better, dense, points, tolerance, base,
                       machine, asdict(opts))


def _label(crit: str, pat: str, s: float | None) -> str:
    return f"{crit} {pat}" + (f" {s:.0%}" if s is not None else "")


def shared_calibration(program: Any, spec: Any, base: dict[str, Any], criteria: Sequence[str],
                       patterns: Sequence[str], say: Callable[[str], None]) -> tuple[Any, dict | None]:
    """Calibration data for the grid, built once; and, unless calibration is sequential, the statistics.

    Sequential calibration measures each layer on the outputs of the layers
    pruned before it, which differ per grid point, so only the batches are
    shared then. Otherwise the activation statistics of every layer any
    pattern plans are collected once, for all points.
    """
    calibrated = [c for c in criteria if needs_calibration(c)]
    if not calibrated:
        return None, None
    rec = load_recipe({**base, "pattern": patterns[0], "criterion": calibrated[0]})
    say("building calibration data")
    calibration = calibration_for(spec, rec.calibration.samples, rec.calibration.seq_len)
    needs = frozenset().union(*(needs_calibration(c) for c in calibrated)) - {"taylor"}
    if rec.calibration.sequential or not needs:
        return calibration, None
    analysis = find_prunable_weights(program)
    roles = {w.fqn: w.role for w in analysis.weights}
    fqns: dict[str, None] = {}
    for pat in patterns:
        try:
            plan = plan_masks(load_recipe({**base, "pattern": pat, "criterion": calibrated[0]}), analysis)
        except (RecipeError, ValueError):
            continue  # the point reports it
        fqns.update((s.fqn, None) for s in plan.specs if roles[s.fqn] != "embedding")
    say(f"collecting calibration statistics once ({', '.join(sorted(needs))}, {len(fqns)} layers)")
    return calibration, collect_stats(program, calibration, list(fqns), needs)


def sweep_point(program: Any, spec: Any, base: dict[str, Any], crit: str, pat: str, s: float | None, task: str,
                opts: EvalOptions, ref_raw: Any, dense: dict[str, float], calibration: Any, stats: dict | None,
                *, progress: Progress | None = None, say: Callable[[str], None] = lambda msg: None) -> SweepPoint:
    """Prune ``program`` at one grid point and evaluate it (a failed point records its error)."""
    t = TASKS[task]
    rec = {**base, "pattern": pat, "criterion": crit}
    rec.pop("sparsity", None)
    if s is not None:
        rec["sparsity"] = s
    t0 = time.perf_counter()
    try:
        rec_obj = load_recipe(rec)
        if stats is not None and needs_calibration(crit):
            result = sparsify(program, rec_obj, fold=True, model_name=spec.name, calibration=calibration,
                              stats={f: dict(d) for f, d in stats.items()})
        else:
            result = sparsify_with_calibration(program, spec, rec_obj, calibration=calibration)
    except (RecipeError, ValueError, RuntimeError) as e:
        say(f"  failed: {e}")
        return SweepPoint(crit, pat, s if s is not None else float("nan"), float("nan"), {},
                          float("nan"), float("nan"), time.perf_counter() - t0, 0.0, str(e))
    prune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = evaluate(result.program, task, model=spec, options=opts, reference_raw=ref_raw, progress=progress)
    q = r.metrics[t.primary]
    say(f"  {t.primary} = {_fmt(q)} (dense {_fmt(dense[t.primary])}), pruned in {prune_s:.1f}s")
    return SweepPoint(crit, pat, rec_obj.sparsity, result.report.overall_sparsity, r.metrics, q,
                      quality_drop(q, dense[t.primary], t.higher_is_better), prune_s, time.perf_counter() - t0)


def _sub(progress: Progress | None, prefix: str) -> Progress | None:
    if progress is None:
        return None
    return lambda desc, done, total: progress(f"{prefix}: {desc}", done, total)


def write_sweep(result: SweepResult, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write sweep.json, sweep.md and sweep.png into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    with staged_output(out_dir, force) as tmp:
        (tmp / "sweep.json").write_text(json.dumps(_finite(result.to_dict()), indent=2, default=str))
        (tmp / "sweep.md").write_text(result.markdown())
        result.plot(tmp / "sweep.png")
    return out_dir


def _finite(o: Any) -> Any:
    """NaN (a failed point) as null: JSON has no NaN."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
