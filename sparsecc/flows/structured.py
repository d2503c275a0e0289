"""Structured pruning as one call: analyse, plan, shrink, verify, report.

Recipes select it with a ``structured:`` section::

    pattern: channel
    structured:
      ratio: 0.5              # fraction of units removed (per group, or overall with scope: global)
      units: [channel, head]  # channel: conv channels / FFN neurons; head: attention heads,
                              # GQA groups, conv groups; strided: one index in every head
      criterion: l2           # l1 | l2 | bn_scale | bn_energy | taylor | random
      scope: layer            # layer (every group loses `ratio`) | global (ranked across groups)
      round_to: 1             # keep channel counts at multiples of 8 / 16 / 32
      include: []             # only groups touching these weights (globs / re:; out:GLOB /
                              # in:GLOB: only groups slicing their output / input channels)
      protect: []             # groups touching these weights stay whole (same syntax)
      overrides: {}           # {"pattern": ratio}: first match wins
      compensate: false       # fold the predicted mean / variance of removed channels into the
                              # next BatchNorm or bias (from the BatchNorm before them; no data)

The result is a physically smaller program (and its state dict) plus a
report: per group what was kept or why it was left whole, MACs and
parameters before and after, and the check that the shrunk program equals
the channel-masked one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.program import ProgramEditor, tensor_leaves
from sparsecc.errors import VerificationError
from sparsecc.passes.structured import (
    MaskChannelsPass,
    ShrinkChannelsPass,
    compensate_removed_means,
    find_dependency_groups,
    plan_structured_pruning,
    taylor_gradients,
)
from sparsecc.plan.calibrate import CalibrationData, collect_stats
from sparsecc.plan.masks import from_rows_view, rows_view
from sparsecc.plan.structured_options import StructuredOptions, parse_structured

__all__ = [
    "StructuredResult",
    "prune_structured",
    "compensate_removed_inputs",
    "count_macs",
    "count_params",
    "ShrinkMismatchError",
]

SHRINK_RTOL = 1e-5  # fp32, an exact transform (DESIGN.md)


class ShrinkMismatchError(VerificationError, RuntimeError):
    """The shrunk program does not compute what the channel-masked one does."""


def count_params(program: ExportedProgram) -> int:
    """Parameters of ``program`` (tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in program.state_dict.values():
        if isinstance(t, torch.nn.Parameter) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


def count_macs(program: ExportedProgram) -> int:
    """Multiply-accumulates of the weight ops (linear, conv, matmul with a parameter) at the example shapes."""
    return find_prunable_weights(program).total_flops // 2


@dataclass
class StructuredResult:
    program: ExportedProgram  # the shrunk program
    plan: Any  # sparsecc.passes.structured.StructuredPlan
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.program.state_dict)


def compensate_removed_inputs(
    dense: ExportedProgram,
    small: ExportedProgram,
    plan: Any,
    calibration: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    damp: float = 0.01,
    min_rows_per_column: float = 4.0,
) -> tuple[ExportedProgram, list[str], dict[str, str]]:
    """Least-squares repair of the layers that lost input channels.

    A linear or conv whose input channels ``R`` were removed keeps ``K``; its
    kept columns become ``W H[:, K] H[K, K]⁻¹`` (``H = X Xᵀ`` of its dense
    input on ``calibration``, dampened by ``damp`` of its mean diagonal): the
    weights that best reproduce the dense layer's output from the channels
    left, as ThiNet and He et al.'s channel pruning do and as SparseGPT does
    for single weights. Grouped and depthwise convs mix no channels and stay
    as they are, and so does a layer with fewer than ``min_rows_per_column``
    calibration rows per kept column (a classifier after global pooling sees
    one row per image: its fit would follow the few calibration images, not the
    data). ``small`` is ``dense`` shrunk with ``plan``; returns it with the
    repaired weights, their names and, per layer left alone, why.
    """
    weights = find_prunable_weights(dense).by_fqn()
    keeps: dict[str, torch.Tensor] = {}
    for target, (axis, keep) in plan.narrowed_inputs().items():
        w = weights.get(target)
        if w is not None and w.role != "embedding" and axis == w.reduction_axis:
            keeps[target] = torch.from_numpy(keep)
    if not keeps:
        return small, [], {}
    stats = collect_stats(dense, CalibrationData(list(calibration)), list(keeps), needs=("hessian",))
    editor = ProgramEditor(small)
    changed: list[str] = []
    notes: dict[str, str] = {}
    for fqn, keep in keeps.items():
        h = stats.get(fqn, {}).get("hessian")
        if h is None or h.dim() != 2:  # grouped / depthwise conv: one statistics set per group, no mixing
            notes[fqn] = "grouped: mixes no channels"
            continue
        w = weights[fqn]
        columns = int(keep.sum()) * (w.numel // (w.out_size * w.reduction_size))  # kept channels x kernel
        rows = int(stats[fqn]["rows"])
        if rows < min_rows_per_column * columns:
            notes[fqn] = f"{rows} calibration rows for {columns} kept columns (< {min_rows_per_column:g} per column)"
            continue
        full = dense.state_dict[fqn].detach()
        shape = [1] * full.dim()
        shape[w.reduction_axis] = -1
        cols = rows_view(keep.reshape(shape).expand(full.shape), w.output_axis, w.reduction_axis)[0]
        mat = rows_view(full, w.output_axis, w.reduction_axis).double()
        out_keep = plan.kept_along(fqn, w.output_axis)
        if out_keep is not None:  # the layer lost outputs too (a hidden layer between two pruned groups)
            mat = mat[torch.from_numpy(out_keep)]
        hd = h.double()
        hkk = hd[cols][:, cols]
        hkk += damp * float(hkk.diagonal().mean().clamp_min(1e-12)) * torch.eye(len(hkk), dtype=hd.dtype)
        new = torch.linalg.solve(hkk, (mat @ hd[:, cols]).T).T  # hkk is symmetric
        target_shape = tuple(small.state_dict[fqn].shape)
        editor.set_tensor(fqn, from_rows_view(new.to(full.dtype), target_shape, w.output_axis, w.reduction_axis))
        changed.append(fqn)
    return (editor.finish() if changed else small), sorted(changed), notes


def prune_structured(
    program: ExportedProgram,
    options: StructuredOptions | dict[str, Any] | None = None,
    *,
    verify_inputs: Sequence[tuple[tuple[Any, ...], dict[str, Any]]] = (),
    calibration: Sequence[tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
    reconstruct: bool = False,
    compensate: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> StructuredResult:
    """Remove ``options.ratio`` of the channels / heads of ``program``; return the smaller program.

    With ``verify_inputs``, the shrunk program must equal the channel-masked
    program on each (fp32, 1e-5 of each output's scale), or
    `ShrinkMismatchError` says by how much. The ``taylor`` criterion needs
    ``calibration`` batches of ``(args, kwargs)``; so does ``reconstruct``,
    which then repairs the layers that lost input channels by least squares
    (`compensate_removed_inputs`), after the check. ``compensate`` (default:
    ``options.compensate``) then folds the BatchNorm-predicted mean and
    variance of the removed channels of the other layers into the next
    BatchNorm or bias (`compensate_removed_means`; no data needed).
    """
    if options is None:
        options = StructuredOptions()
    elif isinstance(options, dict):
        options = parse_structured(options, lambda k, v, m: ValueError(f"structured option '{k}': {v!r} {m}"))
    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not calibration and (reconstruct or options.criterion == "taylor"):  # before any work
        what = "reconstruct=True" if reconstruct else "structured criterion 'taylor'"
        raise ValueError(f"{what} needs calibration batches")
    say("dependency analysis")
    analysis = find_dependency_groups(program)
    timings["analysis"] = time.perf_counter() - t0
    gradients = None
    if options.criterion == "taylor":
        say("taylor gradients")
        t0 = time.perf_counter()
        gradients = taylor_gradients(program, calibration)
        timings["gradients"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_structured_pruning(
        program, options.ratio, analysis=analysis, criterion=options.criterion, scope=options.scope,  # type: ignore[arg-type]
        units=options.units, round_to=options.round_to, include=options.include, protect=options.protect,  # type: ignore[arg-type]
        overrides=dict(options.overrides), gradients=gradients,
    )
    timings["plan"] = time.perf_counter() - t0
    say("shrink")
    t0 = time.perf_counter()
    small = ShrinkChannelsPass(plan)(program).program
    timings["shrink"] = time.perf_counter() - t0
    checks = []
    if verify_inputs:
        say("verify shrunk == masked")
        t0 = time.perf_counter()
        checks = _check_shrunk_equals_masked(small, MaskChannelsPass(plan)(program).program, verify_inputs)
        timings["verify"] = time.perf_counter() - t0
    reconstructed: list[str] = []
    repair_notes: dict[str, str] = {}
    compensate_notes: dict[str, str] = {}
    if reconstruct:
        say("least-squares repair of the layers that lost inputs")
        t0 = time.perf_counter()
        small, reconstructed, repair_notes = compensate_removed_inputs(program, small, plan, calibration)
        timings["reconstruct"] = time.perf_counter() - t0
    compensated: list[str] = []
    if options.compensate if compensate is None else compensate:
        say("fold the predicted means of removed channels into the next BatchNorm / bias")
        t0 = time.perf_counter()
        small, compensated, compensate_notes = compensate_removed_means(program, small, plan, skip=set(reconstructed))
        timings["compensate"] = time.perf_counter() - t0
    macs0, macs1 = count_macs(program), count_macs(small)
    p0, p1 = count_params(program), count_params(small)
    pruned = [g for g in plan.analysis.groups if g.id in plan.kept]
    report = {
        "options": options.to_dict(),
        "summary": {
            "groups": len(plan.analysis.groups),
            "prunable_groups": len(plan.analysis.prunable()),
            "pruned_groups": len(pruned),
            "removed_units": plan.removed_units,
            "macs": [macs0, macs1],
            "macs_ratio": macs1 / macs0 if macs0 else 1.0,
            "params": [p0, p1],
            "params_ratio": p1 / p0 if p0 else 1.0,
        },
        "groups": plan.to_dict()["groups"],
        "verification": {"rtol": SHRINK_RTOL, "cases": checks},
        "reconstructed": reconstructed,
        "compensated": compensated,
        "left_unrepaired": {**compensate_notes, **{k: v for k, v in repair_notes.items() if k not in compensated}},
        "timings_s": timings,
    }
    return StructuredResult(small, plan, report)


def _check_shrunk_equals_masked(small: ExportedProgram, masked: ExportedProgram,
                                verify_inputs: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[dict]:
    """One record per input set; `ShrinkMismatchError` where the shrunk program differs from the masked one."""
    checks: list[dict] = []
    ms, mm = small.module(), masked.module()
    for i, (args, kwargs) in enumerate(verify_inputs):
        try:
            with torch.no_grad():
                want = tensor_leaves(mm(*args, **kwargs))
        except Exception as e:
            if i == 0:
                raise
            # another shape the program does not allow (static batch, say): recorded, not checked
            checks.append({"inputs": i, "ok": True, "skipped": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        with torch.no_grad():
            got = tensor_leaves(ms(*args, **kwargs))
        worst = 0.0
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise ShrinkMismatchError(f"input set {i}: output shape {list(g.shape)} != masked {list(w.shape)}")
            if w.is_floating_point() and w.numel():
                worst = max(worst, float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)))
        checks.append({"inputs": i, "max_rel_err": worst, "ok": worst <= SHRINK_RTOL})
        if worst > SHRINK_RTOL:
            raise ShrinkMismatchError(
                f"shrunk program differs from the channel-masked one by {worst:.2e} of the output scale "
                f"(allowed {SHRINK_RTOL:g}) on input set {i}: a coupling the analysis missed"
            )
    return checks
