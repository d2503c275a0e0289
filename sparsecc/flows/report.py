"""Per-layer reports: what each prunable weight is and what sparsify did with it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from sparsecc.core.analyze import Analysis

__all__ = ["LayerRow", "SparsityReport", "inspect_table", "activation_table", "bundle_summary", "quality_table", "human"]


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) else str(n)


@dataclass
class LayerRow:
    layer: str
    fqn: str
    role: str
    shape: list[int]
    params: int
    flops: int
    pattern: str | None = None
    target: float | None = None
    achieved: float | None = None
    status: str = "dense"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SparsityReport:
    """The outcome of one `sparsify` run, layer by layer."""

    rows: list[LayerRow]
    recipe: dict[str, Any] = field(default_factory=dict)
    not_prunable: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    # The layer-wise budget behind the targets (`sparsecc.budgets.Allocation.to_dict`), when one ran.
    budget: dict[str, Any] = field(default_factory=dict)
    # Zeros found at run time (`sparsecc.flows.runtime_sparsity`): activation thresholds, attention sites.
    runtime: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, analysis: Analysis, specs: dict[str, Any], skipped: dict[str, str], **kw: Any) -> "SparsityReport":
        rows = []
        for w in analysis.weights:
            row = LayerRow(w.layer, w.fqn, w.role, list(w.shape), w.numel, w.flops)
            spec = specs.get(w.fqn)
            if spec is not None:
                row.pattern, row.target, row.achieved = str(spec.pattern), spec.target, spec.achieved
                row.status = "sparse"
            else:
                row.status = f"dense: {skipped.get(w.fqn, 'not selected')}"
            rows.append(row)
        return cls(rows=rows, not_prunable={s.fqn: s.reason for s in analysis.skipped}, **kw)

    # -- totals --------------------------------------------------------------
    @property
    def prunable_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def zero_params(self) -> int:
        return sum(round(r.params * (r.achieved or 0.0)) for r in self.rows)

    @property
    def overall_sparsity(self) -> float:
        return self.zero_params / max(1, self.prunable_params)

    @property
    def sparse_layers(self) -> int:
        return sum(r.status == "sparse" for r in self.rows)

    @property
    def sparse_layer_params(self) -> int:
        """Params of the layers the recipe pruned (layers left dense on purpose excluded)."""
        return sum(r.params for r in self.rows if r.status == "sparse")

    @property
    def sparse_layer_sparsity(self) -> float:
        """Zero share inside the pruned layers: what the recipe asked for, not diluted by dense layers."""
        return self.zero_params / max(1, self.sparse_layer_params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "recipe": self.recipe,
            "summary": {
                "prunable_layers": len(self.rows),
                "sparse_layers": self.sparse_layers,
                "prunable_params": self.prunable_params,
                "zero_params": self.zero_params,
                "overall_sparsity": self.overall_sparsity,
                "sparse_layer_params": self.sparse_layer_params,
                "sparse_layer_sparsity": self.sparse_layer_sparsity,
            },
            "layers": [r.to_dict() for r in self.rows],
            "not_prunable": self.not_prunable,
            "timings_s": self.timings,
            **({"budget": self.budget} if self.budget else {}),
            **({"runtime": self.runtime} if self.runtime else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> Table:
        t = Table(title=f"sparsity per layer{' - ' + self.model if self.model else ''}", show_lines=False)
        for col, kw in (("layer", {}), ("role", {}), ("shape", {}), ("params", {"justify": "right"}),
                        ("pattern", {}), ("target", {"justify": "right"}), ("achieved", {"justify": "right"}),
                        ("status", {})):
            t.add_column(col, **kw)
        for r in self.rows:
            t.add_row(
                r.layer, r.role, "x".join(map(str, r.shape)), human(r.params), r.pattern or "-",
                f"{r.target:.1%}" if r.target is not None else "-",
                f"{r.achieved:.1%}" if r.achieved is not None else "-",
                r.status if r.status == "sparse" else f"[yellow]{r.status}[/yellow]",
            )
        dense = len(self.rows) - self.sparse_layers
        t.caption = (
            f"{self.sparse_layers}/{len(self.rows)} layers sparse: {human(self.zero_params)} of their "
            f"{human(self.sparse_layer_params)} params are zero ({self.sparse_layer_sparsity:.1%})"
            + (f"; {dense} layers ({human(self.prunable_params - self.sparse_layer_params)} params) left dense "
               f"on purpose, {self.overall_sparsity:.1%} of all prunable params" if dense else "")
        )
        return t

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        console.print(self.table())
        for fqn, why in self.not_prunable.items():
            console.print(f"[dim]not prunable: {fqn}: {why}[/dim]")


def inspect_table(analysis: Analysis, title: str = "prunable layers") -> Table:
    t = Table(title=title)
    for col, kw in (("layer", {}), ("weight", {}), ("role", {}), ("shape", {}), ("params", {"justify": "right"}),
                    ("FLOPs/call", {"justify": "right"}), ("note", {})):
        t.add_column(col, **kw)
    for w in analysis.weights:
        note = f"tied: {', '.join(w.tied_uses)}" if w.tied else (f"groups={w.groups}" if w.groups > 1 else "")
        t.add_row(w.layer, w.fqn, w.role, "x".join(map(str, w.shape)), human(w.numel), human(w.flops), note)
    t.caption = f"{len(analysis.weights)} prunable weights, {human(analysis.total_params)} params, {human(analysis.total_flops)} FLOPs per call"
    return t


def activation_table(stats: Sequence[Any], title: str = "linear-layer inputs") -> Table:
    """One row per linear layer: its input's producer, zero and near-zero shares, thresholds (`measure_activations`)."""
    t = Table(title=title)
    for col, kw in (("weight", {}), ("input from", {}), ("in", {"justify": "right"}), ("zero", {"justify": "right"}),
                    ("near zero", {"justify": "right"}), ("|x| 40%", {"justify": "right"}),
                    ("|x| 50%", {"justify": "right"}), ("|x| 70%", {"justify": "right"})):
        t.add_column(col, **kw)
    for s in stats:
        t.add_row(s.fqn, s.producer, str(s.in_features), f"{s.zero:.1%}", f"{s.near_zero:.1%}",
                  *(f"{s.threshold(q):.3g}" for q in (0.4, 0.5, 0.7)))
    if stats:
        mean_zero = sum(s.zero for s in stats) / len(stats)
        mean_near = sum(s.near_zero for s in stats) / len(stats)
        t.caption = (f"{len(stats)} linear layers; mean exact zeros {mean_zero:.1%}, near zeros {mean_near:.1%} "
                     "(|x| <= 1% of the layer's RMS input)")
    return t


def bundle_summary(manifest: Any, folder: str = "") -> Table:
    """One row per target of a compiled bundle (a `Manifest`, or its dict): files, sizes, verification, parity, time."""
    from sparsecc.bundle.manifest import Manifest

    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    t = Table(title=f"bundle {folder}".strip())
    for col in ("target", "file", "size", "pattern in artifact", "parity (max abs err)", "layers", "time"):
        t.add_column(col)
    for name, d in m.targets.items():
        art = d.artifact
        sizes = art.get("sizes", {})
        files = "\n".join(art["files"].values())
        size = "\n".join(f"{human(sizes.get(k, 0))}B" for k in art["files"])
        checked = d.pattern_verification.get("layers", [])
        n_ok = sum(1 for x in checked if x["ok"])
        cases = d.parity.get("cases", [])
        errs = [o.get("max_abs_err") or 0.0 for c in cases for o in c.get("outputs", [])]
        parity = f"{'ok' if d.parity_ok else 'FAILED'} ({max(errs, default=0.0):.1e}, {len(cases)} input sets)"
        support: dict[str, int] = {}
        for c in d.check:
            support[c["support"]] = support.get(c["support"], 0) + 1
        layers = ", ".join(f"{v} {k}" for k, v in support.items())
        t.add_row(name, files, size, f"{'ok' if d.pattern_ok else 'BROKEN'} ({n_ok}/{len(checked)})", parity,
                  layers, f"{sum(v for k, v in d.timings_s.items() if '.' not in k):.1f}s")
    return t


def quality_table(results: Sequence[Any], title: str = "") -> Table:
    """`sparsecc eval`'s table: a dense row beside each sparse one, one column per metric.

    A sparse result that carries its reference's figures as ``dense_X`` gets a
    dense row of its own (``X``) when no dense result of the same task and
    runner is there already, so the two are read side by side.
    """
    rows: list[tuple[Any, str, dict[str, float]]] = []
    have_dense = {(r.task, r.runner) for r in results if r.variant == "dense"}
    for r in results:
        own = {k: v for k, v in r.metrics.items() if not k.startswith("dense_")}
        ref = {k[len("dense_"):]: v for k, v in r.metrics.items() if k.startswith("dense_")}
        if r.variant != "dense" and ref and (r.task, r.runner) not in have_dense:
            rows.append((r, "dense", ref))
        rows.append((r, r.variant, own))
    metrics: list[str] = []
    for _, _, m in rows:
        metrics += [k for k in m if k not in metrics]
    t = Table(title=title or None)
    for col in ("task", "model", "runner", "variant", *metrics, "seconds"):
        t.add_column(col, justify="right" if col in metrics or col == "seconds" else "left")
    for r, variant, m in rows:
        cells = [f"{m[k]:.4f}" if k in m else "" for k in metrics]
        if not r.metrics and r.details.get("unavailable"):
            cells = ["n/a"] * len(metrics)
        seconds = f"{r.seconds:.1f}" if variant == r.variant else ""
        t.add_row(r.task, r.model, r.runner, variant, *cells, seconds)
    return t
