"""Which layers run sparse kernels, decided by measuring them on this machine.

`find_kernel_layers` lists the layers a sparse kernel can replace: an
``aten.linear``, a ``matmul`` / ``mm`` / ``addmm`` whose right operand is a
constant weight (``x @ W`` or ``x @ W.T``), and a 1x1 ``conv2d`` (stride 1,
no padding, one group), each with a folded float32 weight used by that one
op. Every other prunable weight gets the reason it is not a candidate.

`select_kernels` times, for each candidate at its real activation shape (the
program's example shapes), torch's dense op against sparsecc's CSR and BSR
kernels (blocks 4, 8, 16 where they divide the weight) and torch's MKL CSR /
BSR products, interleaved over several rounds, and keeps the fastest sparse
kernel only when it beats dense by ``margin``. Each `KernelChoice` records the
medians, the measured gain, and in words why the layer runs sparse or stays
dense. `fixed_kernels` makes the same choices without measuring (tests, or a
user who knows the answer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.analyze import concrete, conv1x1_why_not, find_prunable_weights
from sparsecc.core.ir import get_node_info
from sparsecc.core.program import constant_target, placeholders_by_target, state_tensor
from sparsecc.core.timing import time_interleaved
from sparsecc.backends.torch_sparse.dense_reference import ort_linear
from sparsecc.backends.torch_sparse.int8_select import (INT8_KERNELS, available_isas, layer_quant, measure_int8,
                                                       parse_variant, pick)

__all__ = [
    "KernelLayer",
    "KernelChoice",
    "KernelPlan",
    "find_kernel_layers",
    "select_kernels",
    "fixed_kernels",
    "DEFAULT_MARGIN",
    "DEFAULT_MIN_SPARSITY",
]

aten = torch.ops.aten
DEFAULT_MARGIN = 1.1  # a sparse kernel must beat dense by 10% to be used
DEFAULT_MIN_SPARSITY = 0.3  # below this, not even measured
_BLOCKS = (4, 8, 16)
_TRANSPOSES = {aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default}
_CONV2D = {aten.conv2d.default, aten.convolution.default}


@dataclass(frozen=True)
class KernelLayer:
    """A layer a sparse kernel can replace.

    ``op`` is ``linear`` (``linear``, or a ``matmul``/``mm``/``addmm`` with the
    weight on the right) or ``conv1x1``. The weight as the kernel takes it is
    ``[out, in]``: ``weight_transposed`` says the parameter is stored ``[in, out]``
    (``x @ W``). ``input_shape`` is the activation's shape in the example.
    """

    fqn: str
    layer: str
    node: str
    op: str
    weight_transposed: bool
    shape: tuple[int, int]
    input_shape: tuple[int, ...]
    bias: str | None  # FQN of a constant bias, if the op has one

    @property
    def tokens(self) -> int:
        """Rows of the product per call: activations per output feature."""
        if self.op == "conv1x1":
            b, _, h, w = self.input_shape
            return b * h * w
        return math.prod(self.input_shape) // max(1, self.shape[1])


@dataclass(frozen=True)
class KernelChoice:
    """What one layer runs, and the measurement behind it.

    ``kernel`` is ``dense`` or one of `sparsecc.kernels.KERNELS`; ``block`` is 1
    for CSR. ``times_ms`` holds the median of each candidate (``dense``,
    ``csr``, ``bsr8``, ``torch_bsr8``, ...); ``gain`` is dense over the chosen
    kernel (None when nothing was measured).
    """

    fqn: str
    layer: str
    node: str
    op: str
    kernel: str
    block: int
    sparsity: float
    shape: tuple[int, int]
    tokens: int
    reason: str
    gain: float | None = None
    times_ms: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    weight_transposed: bool = False
    isa: str = ""  # the instruction set measured fastest for this shape ("" = the loader's choice)

    @property
    def sparse(self) -> bool:
        return self.kernel != "dense"

    @property
    def label(self) -> str:
        if self.kernel == "dense":
            return "dense"
        return f"{self.kernel} {self.block}x{self.block}" if self.block > 1 else self.kernel

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KernelChoice":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["shape"] = tuple(d["shape"])
        return cls(**d)


@dataclass
class KernelPlan:
    """Per-layer kernel choices, and the prunable weights that were no candidate (with why)."""

    choices: list[KernelChoice]
    not_candidates: dict[str, str]
    threads: int
    isa: str

    @property
    def sparse(self) -> list[KernelChoice]:
        return [c for c in self.choices if c.sparse]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "isa": self.isa,
            "layers": [c.to_dict() for c in self.choices],
            "not_candidates": dict(self.not_candidates),
            "summary": {"candidates": len(self.choices), "sparse": len(self.sparse)},
        }


# -- finding the layers ----------------------------------------------------------


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(concrete(d) for d in val.shape)


def _classify(param: torch.fx.Node, user: torch.fx.Node, via: torch.fx.Node | None) -> tuple[str, bool, Any, Any] | str:
    """(op, weight_transposed, activation node, bias node) for a replaceable use, else why not."""
    operand = via if via is not None else param
    t, args = user.target, user.args
    if t == aten.linear.default:
        if via is not None:
            return "linear over a transposed weight"
        return "linear", False, args[0], args[2] if len(args) > 2 else None
    if t in (aten.matmul.default, aten.mm.default, aten.addmm.default):
        a, b = (args[1], args[2]) if t == aten.addmm.default else (args[0], args[1])
        if b is not operand:
            return "the weight is the left operand of the product (W @ x)"
        if t == aten.addmm.default and (user.kwargs.get("beta", 1) != 1 or user.kwargs.get("alpha", 1) != 1):
            return "addmm with alpha or beta other than 1"
        bias = args[0] if t == aten.addmm.default else None
        if bias is not None:
            w = _shape(param) or (0, 0)
            out_features = w[1] if via is None else w[0]  # x @ W: W is [in, out]; x @ W.T: W is [out, in]
            if _shape(bias) != (out_features,):
                return f"addmm bias of shape {list(_shape(bias) or ())} is not one value per output"
        return "linear", via is None, a, bias
    if t in _CONV2D:
        why = conv1x1_why_not(user, _shape(param) or ())
        if why is not None:
            return why
        return "conv1x1", False, args[0], args[2] if len(args) > 2 else None
    return f"{user.name} ({t}) has no sparse kernel"


def find_kernel_layers(program: ExportedProgram) -> tuple[list[KernelLayer], dict[str, str]]:
    """The layers a sparse kernel can replace, and why each other prunable weight cannot be."""
    analysis = find_prunable_weights(program)
    by_target = placeholders_by_target(program)
    layers: list[KernelLayer] = []
    why_not: dict[str, str] = {}
    for w in analysis.weights:
        param = by_target[w.fqn]
        info = get_node_info(param)
        if info is not None and info.mask:
            why_not[w.fqn] = "its mask is not folded into the weight (compile folds it; sparsify with fold=True)"
            continue
        if state_tensor(program, w.fqn).dtype != torch.float32:
            why_not[w.fqn] = f"dtype {state_tensor(program, w.fqn).dtype} (the kernels are float32)"
            continue
        uses: list[tuple[torch.fx.Node, torch.fx.Node | None]] = []
        for user in param.users:
            if user.target in _TRANSPOSES and len(w.shape) == 2 and len(user.users) == 1:
                uses.append((next(iter(user.users)), user))
            else:
                uses.append((user, None))
        if len(uses) != 1:
            why_not[w.fqn] = f"used by {len(uses)} ops ({', '.join(u.name for u, _ in uses)}); the kernels replace one"
            continue
        user, via = uses[0]
        got = _classify(param, user, via)
        if isinstance(got, str):
            why_not[w.fqn] = got
            continue
        op, transposed, x, bias = got
        shape = _shape(param)
        out_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
        x_shape = _shape(x)
        if x_shape is None:
            why_not[w.fqn] = "activation shape unknown"
            continue
        bias_fqn = constant_target(program, bias) if bias is not None else None
        if bias is not None and bias_fqn is None:
            why_not[w.fqn] = "bias is computed in the graph, not a constant"
            continue
        layers.append(KernelLayer(w.fqn, w.layer, user.name, op, transposed, out_in, x_shape, bias_fqn))
    return layers, why_not


def weight_matrix(program: ExportedProgram, layer: KernelLayer) -> torch.Tensor:
    """The layer's weight as ``[out, in]`` float32."""
    w = state_tensor(program, layer.fqn).detach()
    if layer.op == "conv1x1":
        w = w[:, :, 0, 0]
    elif layer.weight_transposed:
        w = w.t()
    return w.contiguous()


# -- measuring ---------------------------------------------------------------------


def _sparsity(w: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(w)) / max(1, w.numel())


def _run(layer: KernelLayer, x: torch.Tensor, cw: kernels.CompressedWeight, bias, kernel: str, isa: str = ""):
    if layer.op == "conv1x1":
        return lambda: kernels.sparse_conv1x1(x, cw, bias, kernel, isa)
    return lambda: kernels.sparse_linear(x, cw, bias, kernel, isa)


def _measure(program: ExportedProgram, layer: KernelLayer, w: torch.Tensor, *, blocks: Sequence[int],
             include_torch: bool, rounds: int, sample_s: float, seed: int, isas: Sequence[str] = (),
             ort: bool = False, quant: dict | None = None) -> dict[str, float]:
    """Median seconds of dense and every sparse variant; sparsecc's kernels once per ISA in ``isas``
    (named ``bsr8`` on the loader's ISA, ``bsr8@avx2`` on another), ORT's dense product as ``ort_dense``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(layer.input_shape, generator=g)
    bias = state_tensor(program, layer.bias).detach().float() if layer.bias else None
    if quant is not None:  # int8 layer: int8 sparse kernels against every dense alternative
        return {k: v / 1e3 for k, v in measure_int8(
            x, w, bias, blocks=blocks, isas=isas or [kernels.int8_isa()], ort=ort,
            act_scale=float(quant.get("act_scale") or 0.0), rounds=rounds, sample_s=sample_s).items()}
    if layer.op == "conv1x1":
        w4 = w[:, :, None, None].contiguous()
        variants: dict[str, Callable[[], Any]] = {"dense": lambda: torch.nn.functional.conv2d(x, w4, bias)}
    else:
        variants = {"dense": lambda: torch.nn.functional.linear(x, w, bias)}
        f = ort_linear(w, bias, x) if ort else None
        if f is not None:
            variants["ort_dense"] = f
    formats = [1] + [b for b in blocks if layer.shape[0] % b == 0 and layer.shape[1] % b == 0]
    current = kernels.isa()
    for b in formats:
        cw = kernels.compress(w, b)
        own, name = ("csr", "csr") if b == 1 else ("bsr", f"bsr{b}")
        for isa in isas or [current]:
            variants[name if isa == current else f"{name}@{isa}"] = _run(layer, x, cw, bias, own, isa)
        if include_torch:
            variants["torch_" + name] = _run(layer, x, cw, bias, "torch_" + own)
    with torch.inference_mode():
        return time_interleaved(variants, rounds=rounds, sample_s=sample_s).medians()


def _choose(times: dict[str, float], margin: float, where: str, common: dict) -> KernelChoice:
    """Keep the fastest sparse variant when it beats the fastest dense one (torch, ORT, int8) by ``margin``."""
    best, ref, gain = pick(times)
    kernel, block, isa = parse_variant(best)
    against = "dense" if ref == "dense" else f"dense ({ref})"
    if gain >= margin:
        label = f"{kernel} {block}x{block}" if block > 1 else kernel
        return KernelChoice(kernel=kernel, block=block, gain=gain, times_ms=times, isa=isa, reason=(
            f"runs {label}: measured {gain:.2f}x faster than {against} {where}{' on ' + isa if isa else ''} "
            f"({times[ref]:.3f} -> {times[best]:.3f} ms)"), **common)
    return KernelChoice(kernel="dense", block=1, gain=gain, times_ms=times, reason=(
        f"stays dense: fastest sparse kernel ({best}) measured {gain:.2f}x of {against} {where}, "
        f"below the {margin:.2f}x margin"), **common)


def select_kernels(
    program: ExportedProgram,
    *,
    margin: float = DEFAULT_MARGIN,
    min_sparsity: float = DEFAULT_MIN_SPARSITY,
    blocks: Sequence[int] = _BLOCKS,
    include_torch: bool = True,
    rounds: int = 7,
    sample_ms: float = 2.0,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    isas: Sequence[str] | None = None,
    dense_reference: str = "best",
) -> KernelPlan:
    """Time dense against every sparse kernel for each candidate layer; keep what pays.

    ``threads`` (default: torch's current setting) is the intra-op thread
    count the layers are timed with, which should be the one the program will
    run with. ``progress(done, total, layer)`` is called per layer.
    ``isas`` (default: every vector ISA of this CPU) are the instruction sets
    sparsecc's kernels are timed on, per layer shape. ``dense_reference``
    ``"best"`` also times the layer in ONNX Runtime (when installed) and
    compares against the faster dense product; ``"torch"`` only torch's.
    Layers with an int8 grid (`sparsecc.passes.QuantizeWeightsPass`) are
    timed as int8 (see `int8_select`).
    """
    if dense_reference not in ("best", "torch"):
        raise ValueError(f"dense_reference must be 'best' or 'torch', got {dense_reference!r}")
    if margin < 1.0:
        raise ValueError(f"margin must be at least 1.0 (a sparse kernel no faster than dense), got {margin}")
    kernels.load()
    layers, why_not = find_kernel_layers(program)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    used_threads = torch.get_num_threads()
    choices = []
    try:
        for i, layer in enumerate(layers):
            if progress is not None:
                progress(i, len(layers), layer.layer)
            w = weight_matrix(program, layer)
            sp = _sparsity(w)
            common = dict(fqn=layer.fqn, layer=layer.layer, node=layer.node, op=layer.op, sparsity=sp,
                          shape=layer.shape, tokens=layer.tokens, threads=used_threads,
                          weight_transposed=layer.weight_transposed)
            if sp < min_sparsity:
                choices.append(KernelChoice(kernel="dense", block=1, reason=(
                    f"stays dense: {sp:.0%} zeros, below the {min_sparsity:.0%} where sparse kernels are tried"),
                    **common))
                continue
            quant = layer_quant(program, layer)
            med = _measure(program, layer, w, blocks=blocks, include_torch=include_torch, rounds=rounds,
                           sample_s=sample_ms / 1e3, seed=i, ort=dense_reference == "best", quant=quant,
                           isas=available_isas(quant is not None) if isas is None else isas)
            times = {k: v * 1e3 for k, v in med.items()}
            where = f"at {layer.tokens} tokens, {used_threads} thread{'s' if used_threads > 1 else ''}"
            choices.append(_choose(times, margin, where, common))
    finally:
        torch.set_num_threads(old_threads)
    if progress is not None:
        progress(len(layers), len(layers), "")
    return KernelPlan(choices, why_not, used_threads, kernels.isa())


def fixed_kernels(program: ExportedProgram, kernel: str = "bsr", block: int = 8,
                  min_sparsity: float = 0.0) -> KernelPlan:
    """Use ``kernel`` (with ``block`` for BSR) on every candidate it fits, without measuring.

    The int8 kernels (``int8_g4``, ``int8_bsr``) apply to quantized linear layers only."""
    if kernel not in kernels.KERNELS + INT8_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(kernels.KERNELS + INT8_KERNELS)}")
    block = 1 if kernel.endswith("csr") or kernel == "int8_g4" else int(block)
    own = {"bsr": ("BSR", kernels.OWN_BLOCKS), "int8_bsr": ("int8 BSR", (4, 8, 16))}.get(kernel)
    if own is not None and block not in own[1]:
        raise ValueError(f"sparsecc's {own[0]} kernel has code for blocks {own[1]}, not {block}")
    layers, why_not = find_kernel_layers(program)
    choices = []
    for layer in layers:
        sp = _sparsity(weight_matrix(program, layer))
        common = dict(fqn=layer.fqn, layer=layer.layer, node=layer.node, op=layer.op, sparsity=sp,
                      shape=layer.shape, tokens=layer.tokens, weight_transposed=layer.weight_transposed)
        if kernel in INT8_KERNELS and layer_quant(program, layer) is None:
            choices.append(KernelChoice(kernel="dense", block=1, reason=(
                f"stays dense: {kernel} needs a quantized linear layer with in_features % 4 == 0"), **common))
        elif layer.shape[0] % block or layer.shape[1] % max(block, 4 if kernel in INT8_KERNELS else 1):
            choices.append(KernelChoice(kernel="dense", block=1, reason=(
                f"stays dense: block {block} does not divide the weight {list(layer.shape)}"), **common))
        elif sp < min_sparsity:
            choices.append(KernelChoice(kernel="dense", block=1, reason=f"stays dense: {sp:.0%} zeros", **common))
        else:
            choices.append(KernelChoice(kernel=kernel, block=block, reason="fixed by the caller, not measured",
                                        **common))
    return KernelPlan(choices, why_not, torch.get_num_threads(), kernels.isa())
