"""ExportedProgram -> edge program with XNNPACK delegates -> ``.pte`` bytes.

Lowering works on a private copy of the program, made by a
``torch.export.save``/``load`` round trip: ExecuTorch's passes can pin
dynamic dims in the shape env, and a shallow copy would share that shape env
with the caller's program (and break it for every later user). On the copy,
sparse layers may become sparsecc custom ops (``custom_ops``, see `custom_ops`),
splits become slices (see `split_to_slices`) and unbounded dynamic dims get
explicit upper bounds (see `dynamic_dims`). Failures raise `LoweringError`
naming the stage, the op and the program node when the message tells.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.backends.base import LoweringError, LowerOptions

from . import _deps
from .custom_ops import apply_custom_ops
from .int8 import quantize_dynamic_linears
from .dynamic_dims import DynamicDim, apply_upper_bounds, find_dynamic_dims, narrow_to_lowered, specialized_dims
from .rejections import capture_rejections
from .split_to_slices import split_to_slices

__all__ = ["EdgeLowering", "lower_to_edge", "to_pte", "private_copy", "lowering_error"]


@dataclass
class EdgeLowering:
    """The edge program manager and what lowering learned on the way."""

    manager: Any  # executorch.exir.EdgeProgramManager
    rejections: dict[str, str]
    dims: dict[str, DynamicDim]
    specialized: dict[str, int]
    rewrites: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)  # see `int8.quantize_dynamic_linears`
    custom_ops: dict[str, Any] | None = None  # the record of `custom_ops.apply_custom_ops`, when asked for
    compressed: dict[str, Any] = field(default_factory=dict)  # {fqn: compressed weight} of the layers it replaced

    @property
    def edge_program(self) -> ExportedProgram:
        return self.manager.exported_program()


def private_copy(program: ExportedProgram) -> ExportedProgram:
    """A copy with its own graph, tensors and shape env."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    return torch.export.load(buf)


_OP = re.compile(r"\baten(?:\.|::)(\w+)(?:\.(\w+))?")


def lowering_error(stage: str, exc: BaseException, program: ExportedProgram) -> LoweringError:
    """A `LoweringError` that names the stage, and the op and node when the message does."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = lines[0] if lines else type(exc).__name__
    ops = list(dict.fromkeys(f"aten.{m[0]}" + (f".{m[1]}" if m[1] else "") for m in _OP.findall(text)))
    msg = f"ExecuTorch lowering failed in {stage}: {type(exc).__name__}: {head[:400]}"
    if ops:
        msg += f"\n  op: {ops[0]}"
        node = _node_for_op(program, ops[0])
        if node is not None:
            msg += f"\n  node: {node.name} ({node.target})"
            trace = (node.meta.get("stack_trace") or "").strip().splitlines()
            if trace:
                msg += f"\n  from: {trace[-1].strip()}"
        msg += (
            "\n  the op has no ExecuTorch kernel and XNNPACK does not take it: replace it in the "
            "model, or keep that part of the model in PyTorch"
        )
    return LoweringError(msg)


def _node_for_op(program: ExportedProgram, op: str) -> torch.fx.Node | None:
    """The program node behind ``op`` (exact op, else the op it decomposed into)."""
    base = op.split(".")[1]
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    for n in calls:
        if str(n.target) == op or str(n.target).split(".")[1:2] == [base]:
            return n
    for n in calls:
        parts = str(n.target).split(".")
        if len(parts) > 1 and len(parts[1]) >= 3 and base.startswith(parts[1]):
            return n
    return None


def lower_to_edge(program: ExportedProgram, options: LowerOptions | None = None) -> EdgeLowering:
    """Prepare a private copy of ``program`` and lower it with the XNNPACK partitioner."""
    options = options or LowerOptions()
    exir = _deps.exir()
    partitioner_mod = _deps.xnnpack_partitioner()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    try:
        prepared = private_copy(program)
    except Exception as e:
        raise lowering_error("copying the program (torch.export save/load)", e, program) from e
    prepared, int8 = quantize_dynamic_linears(prepared, program)  # StaticActivationsError for static int8
    custom, compressed = None, {}
    if options.extra.get("custom_ops"):  # times layers in the runtime: its own entry in the timings
        t1 = time.perf_counter()
        threads = options.extra.get("custom_ops_threads") or options.threads
        prepared, custom, compressed = apply_custom_ops(prepared, program, options.extra, threads)
        timings["custom_ops"] = time.perf_counter() - t1
        t0 += timings["custom_ops"]
    rewrites = {"split_to_slices": split_to_slices(prepared), "int8_dynamic_linear": len(int8["layers"])}
    if custom is not None:
        rewrites["custom_ops"] = custom["replaced"]
    names: Mapping[str, Mapping[int, str]] = options.extra.get("dynamic_axes") or {}
    dims = find_dynamic_dims(prepared, names, options.extra.get("dim_max"))
    apply_upper_bounds(prepared, dims)
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with capture_rejections() as rejections:
        try:
            manager = exir.to_edge_transform_and_lower(
                prepared, partitioner=[partitioner_mod.XnnpackPartitioner()]
            )
        except Exception as e:
            raise lowering_error("to_edge_transform_and_lower", e, program) from e
    timings["to_edge_and_delegate"] = time.perf_counter() - t0

    dims = narrow_to_lowered(dims, manager.exported_program())
    specialized = specialized_dims(program, manager.exported_program())
    if specialized:
        pinned = ", ".join(f"{dims[s].name}={v}" for s, v in specialized.items() if s in dims)
        warnings.warn(
            f"ExecuTorch lowering fixed dynamic dims to the example's size ({pinned}); "
            "the .pte accepts only that size there",
            stacklevel=2,
        )
    return EdgeLowering(manager, dict(rejections), dims, specialized, rewrites, timings, int8, custom, compressed)


def to_pte(lowering: EdgeLowering, original: ExportedProgram) -> bytes:
    """Run ExecuTorch's memory planning and emission; return the ``.pte`` bytes."""
    t0 = time.perf_counter()
    try:
        data = bytes(lowering.manager.to_executorch().buffer)
    except Exception as e:
        raise lowering_error("to_executorch", e, original) from e
    lowering.timings["to_executorch"] = time.perf_counter() - t0
    return data
