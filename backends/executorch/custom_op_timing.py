"""Time candidate layers in the ExecuTorch runtime: XNNPACK dense against sparsecc's custom op.

Every layer is timed where it will run, in this process's ExecuTorch runtime
(its one thread pool, the one XNNPACK and the custom op share), on its own
input shape from the program's example (or ``tokens`` rows), interleaved
(`sparsecc.core.timing.time_interleaved`).

Lowering a program costs about a second per method, so one timing program
holds one method per distinct layer *shape*, not per layer:

- dense: the layer as XNNPACK runs it (``linear`` / 1x1 ``conv2d`` with
  constant weights); its time does not depend on the values, so each
  shape's first layer stands for all layers of that shape;
- sparse, per format (``csr``, ``bsr<B>``): the custom op with the
  compressed weight as method *inputs* (the stored count a dynamic dim), so
  every layer of the shape runs its own weight through one method.

A 1x1 convolution pays more than its own time for leaving XNNPACK: inside
a delegate its NCHW activations live channels-last, so running it outside
turns them back to NCHW before it and channels-last again after it, where
the dense conv, mid-graph, needs no conversion (while timed alone, it pays
both). Each such layer is charged twice the conversions of its input and its
output (``boundary_s``), measured as XNNPACK transposes of those shapes. A
linear layer needs no conversion: it is charged nothing.

Inputs are not memory-planned (``alloc_graph_input=False``): the runtime
reads the caller's tensors in place, so passing a weight costs no copy.
Each method returns one element of the result: the Python runtime copies
outputs with torch, which on a busy machine costs more than small layers.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import torch
from torch import nn
from torch.export import Dim

import sparsecc.kernels as kernels
from sparsecc.core.timing import time_interleaved
from sparsecc.backends.base import LoweringError

from . import _deps
from .custom_op_layers import Candidate, block_choices
from .runtime import note_program_loaded, set_threads_once, thread_count

__all__ = ["time_layers", "timing_shape", "DEFAULT_TOKENS"]

DEFAULT_TOKENS = 128


def timing_shape(c: Candidate, tokens: int | None) -> tuple[int, ...]:
    """The input a layer is timed on: its own (a linear's rows flattened), or ``tokens`` rows / pixels."""
    k = c.weight.shape[1]
    if tokens:
        return (1, k, 1, tokens) if c.op == "conv1x1" else (tokens, k)
    if c.op == "conv1x1":
        return tuple(c.x_shape)
    rows = 1
    for d in c.x_shape[:-1]:
        rows *= d
    return (rows or DEFAULT_TOKENS, k)


def _first(y: torch.Tensor) -> torch.Tensor:
    return y[:1, :1, :1, :1] if y.dim() == 4 else y[:1, :1]


class _Dense(nn.Module):
    def __init__(self, op: str, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.op = op
        self.weight = nn.Parameter(weight[:, :, None, None] if op == "conv1x1" else weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "conv1x1":
            return _first(nn.functional.conv2d(x, self.weight, self.bias))
        return _first(nn.functional.linear(x, self.weight, self.bias))


class _ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first(x.permute(0, 2, 3, 1).contiguous())


class _Sparse(nn.Module):
    def __init__(self, op: str, n: int, k: int):
        super().__init__()
        self.op, self.n, self.k = op, n, k

    def forward(self, x, crow, col, values, bias=None):
        fn = torch.ops.sparsecc.et_sparse_conv1x1 if self.op == "conv1x1" else torch.ops.sparsecc.et_sparse_linear
        return _first(fn(x, crow, col, values, bias, self.n, self.k))


def _sparse_example(n: int, k: int, block: int, x: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """Export arguments with two stored entries: their count is dynamic, the values do not matter."""
    rows = n // block
    crow = torch.full((rows + 1,), 2, dtype=torch.int32)
    crow[0] = 0
    col = torch.zeros(2, dtype=torch.int32)
    values = torch.zeros((2,) if block == 1 else (2, block, block))
    return (x, crow, col, values) + ((bias,) if bias is not None else ())


def _export_methods(cands: Sequence[Candidate], shapes: dict[str, tuple[int, ...]], formats: dict[str, list[int]]
                    ) -> tuple[dict[str, Any], dict[tuple, str]]:
    """The exported programs of the timing program and ``{(variant, shape key): method name}``."""
    methods: dict[str, Any] = {}
    names: dict[tuple, str] = {}
    for c in cands:
        n, k = c.weight.shape
        key = (c.op, n, k, c.bias is not None, shapes[c.fqn])
        x = torch.zeros(shapes[c.fqn])
        variants = ["dense"] + ["csr" if b == 1 else f"bsr{b}" for b in formats[c.fqn]]
        for y_shape in _layout_shapes(c, shapes[c.fqn]):
            if ("nhwc", y_shape) not in names:
                name = names[("nhwc", y_shape)] = f"m{len(names)}"
                methods[name] = torch.export.export(_ToChannelsLast(), (torch.zeros(y_shape),), strict=False)
        for v in variants:
            if (v, key) in names:
                continue
            name = names[(v, key)] = f"m{len(names)}"
            if v == "dense":
                methods[name] = torch.export.export(_Dense(c.op, c.weight, c.bias), (x,), strict=False)
                continue
            block = 1 if v == "csr" else int(v[3:])
            stored = Dim(f"stored_{name}", min=1, max=max(2, (n // block) * (k // block)))
            args = _sparse_example(n, k, block, x, c.bias)
            dyn = (None, None, {0: stored}, {0: stored}) + ((None,) if c.bias is not None else ())
            methods[name] = torch.export.export(_Sparse(c.op, n, k), args, dynamic_shapes=dyn, strict=False)
    return methods, names


def _layout_shapes(c: Candidate, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The activations a 1x1 conv outside XNNPACK turns back to NCHW and on to channels-last: input, output."""
    if c.op != "conv1x1":
        return []
    return [shape, (shape[0], c.weight.shape[0], *shape[2:])]


def _lower(methods: dict[str, Any], dense: set[str]) -> bytes:
    exir = _deps.exir()
    passes = _deps.exir_passes()
    xnnpack = _deps.xnnpack_partitioner().XnnpackPartitioner
    # XNNPACK for the dense methods only: in a sparse one it would take just the final slice, at the
    # cost of a delegate's preprocessing (about a second each)
    partitioners = {name: [xnnpack()] if name in dense else [] for name in methods}
    config = exir.ExecutorchBackendConfig(memory_planning_pass=passes.MemoryPlanningPass(alloc_graph_input=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # the IR check costs a third of the time; these small generated programs do not need it
        manager = exir.to_edge_transform_and_lower(methods, partitioner=partitioners,
                                                   compile_config=exir.EdgeCompileConfig(_check_ir_validity=False))
        return bytes(manager.to_executorch(config).buffer)


def time_layers(cands: Sequence[Candidate], *, rounds: int = 7, tokens: int | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """``{fqn: {"tokens", "median_s": {"dense", "csr", "bsr8", ...}, "boundary_s"}}``, ``"__threads__"`` (the
    pool size) and ``"__program__"`` (the timing program's methods and build times).

    Each weight must hold a nonzero (the stored count is a dynamic dim from 1).
    """
    if not cands:
        return {}
    from sparsecc.kernels.et_library import EtLibraryError, load_et_library
    from sparsecc.kernels.executorch_ops import define_ops

    define_ops()  # the ops the timing programs export

    try:
        load_et_library()
    except EtLibraryError as e:
        raise LoweringError(f"custom_ops: the ExecuTorch kernel library is not available: {e}") from e
    try:
        set_threads_once(threads)
    except Exception as e:  # the pool was sized already in this process: time with it, and say so
        warnings.warn(f"custom_ops: timing with ExecuTorch's {thread_count()} threads, not {threads} ({e})",
                      stacklevel=2)
    shapes = {c.fqn: timing_shape(c, tokens) for c in cands}
    formats = {c.fqn: block_choices(c.weight) for c in cands}
    t0 = time.perf_counter()
    methods, names = _export_methods(cands, shapes, formats)
    t1 = time.perf_counter()
    try:
        data = _lower(methods, {name for (v, *_), name in names.items() if v in ("dense", "nhwc")})
        note_program_loaded()
        program = _deps.runtime().Runtime.get().load_program(data)
    except Exception as e:
        raise LoweringError(f"custom_ops: building the per-layer timing program failed: {type(e).__name__}: {e}") from e
    loaded = {name: program.load_method(name) for name in methods}
    t2 = time.perf_counter()
    out: dict[str, Any] = {"__threads__": thread_count(), "__program__": {
        "methods": len(methods), "export_s": round(t1 - t0, 3), "lower_s": round(t2 - t1, 3)}}
    gen = torch.Generator().manual_seed(0)
    for c in cands:
        n, k = c.weight.shape
        key = (c.op, n, k, c.bias is not None, shapes[c.fqn])
        x = torch.randn(shapes[c.fqn], generator=gen)
        dense = loaded[names[("dense", key)]]
        fns = {"dense": (lambda m=dense: m.execute([x]))}
        for b in formats[c.fqn]:
            v = "csr" if b == 1 else f"bsr{b}"
            cw = kernels.compress(c.weight, b)
            args = [x, cw.crow_indices, cw.col_indices, cw.values] + ([c.bias] if c.bias is not None else [])
            fns[v] = (lambda m=loaded[names[(v, key)]], a=args: m.execute(a))
        layouts = _layout_shapes(c, shapes[c.fqn])
        for i, y_shape in enumerate(layouts):
            t = torch.randn(y_shape, generator=gen)
            fns[f"nhwc{i}"] = (lambda m=loaded[names[("nhwc", y_shape)]], t=t: m.execute([t]))
        med = time_interleaved(fns, warmup=2, rounds=rounds, sample_s=0.01).medians()
        boundary = 2.0 * sum(med.pop(f"nhwc{i}") for i in range(len(layouts)))
        rows = shapes[c.fqn][0] if c.op == "linear" else shapes[c.fqn][0] * shapes[c.fqn][2] * shapes[c.fqn][3]
        out[c.fqn] = {"tokens": int(rows), "median_s": {v: float(t) for v, t in med.items()},
                      "boundary_s": float(boundary)}
    return out
