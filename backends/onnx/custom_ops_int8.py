"""Replace an int8 sparse layer by ``sparsecc.SparseMatMulInt8`` where it measures faster.

Programs quantized with ``quantize: {weights: int8, activations: dynamic}``
reach ONNX with each weight stored as int8 integers read through a
per-channel ``DequantizeLinear`` with zero point 0 (`backends.onnx.quantize`).
A ``MatMul`` (or plain ``Gemm``) reading such a weight, on activations that
are not themselves quantized in the file, becomes the custom op: its
``values`` are the program's integers packed as `sparsecc.kernels.compress_int8`
packs them (``[nnz_blocks, br, bc]``: ``1 x 4`` row groups or square 4, 8, 16
blocks), ``scales`` the DequantizeLinear's scales unchanged, and the op
quantizes activations per token at run time, as ``torch.ops.sparsecc.int8_linear``
does (same C++ driver, bit for bit). Nothing else is stored: the row sums the
VNNI path needs are made when the session creates the kernel.

Per layer, on its own input shape, interleaved: ONNX Runtime fp32 dense of the
dequantized weight, the dense int8 layer a user gets from ONNX Runtime
(``quantize_dynamic``, per-channel QInt8 weights) and the op in each block
layout; the op replaces the layer only when it beats the faster of the two
dense ones by the margin. Where ONNX Runtime's int8 layer is the faster, and for
int8 weights too dense for a sparse kernel, the layer becomes that int8 layer
(``com.microsoft.DynamicQuantizeMatMul`` over the program's integers and scales):
a weight-only ``DequantizeLinear`` would run at fp32 speed. That int8 layer is
first checked against the fp32 layer on this CPU (`ort_int8_error`): without
VNNI, ONNX Runtime's kernels saturate on full-range int8 weights, and a layer
off by more than one int8 layer's parity tolerance keeps fp32 arithmetic
(``provenance[fqn]["ort_int8_rejected"]`` says why).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparsecc.core.ort_session import CUSTOM_OP_DOMAIN, open_session, session_options
from sparsecc.verify.parity import INT8_RTOL_PER_LAYER

from . import _deps
from .custom_ops import (DEFAULT_MARGIN, MIN_FILL, MIN_SPARSITY, _fold_bias, _input_shapes, _model, _rebuild,
                         _timing_shape, dense_matmul_model, time_models)
from .graph_index import GraphIndex, attribute

__all__ = ["SPARSE_INT8_OP", "INT8_BLOCKS", "Int8Candidate", "find_int8_candidates", "compress_int8_np",
           "int8_block_choices", "sparse_int8_model", "dense_int8_model", "ort_int8_model", "ort_int8_error",
           "apply_int8_custom_ops", "int8_chain_depth"]

SPARSE_INT8_OP = "SparseMatMulInt8"
INT8_BLOCKS = (16, 8, 4)  # square blocks the int8 kernels have code for, widest first (block 1: 1x4 groups)


@dataclass
class Int8Candidate:
    """A MatMul / Gemm whose weight is int8 integers through DequantizeLinear: ``q`` [N, K] int8, ``scale`` [N]."""

    node: Any
    x: str
    initializer: str  # the int8 integers (provenance's initializer)
    q: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    output: str
    pos: tuple[int, ...]  # graph.node positions replaced: the node, [the Add], [the DequantizeLinear]
    conv1x1: bool = False  # the timing helpers of custom_ops read it
    dq_inputs: tuple[str, ...] = ()  # the DequantizeLinear's integers, scales [, zero points]
    trans_b: bool = False  # a Gemm reading the integers as [N, K]

    @property
    def weight(self) -> np.ndarray:
        """The dequantized [N, K] weight (what the program holds), for the fp32 dense reference."""
        return self.q.astype(np.float32) * self.scale[:, None]


def _int8_weight(index: GraphIndex, name: str, by_init: set[str], out_axis: int) -> tuple[Any, Any, Any] | None:
    """(DequantizeLinear, int8 [.., ..] integers, float32 scales) when ``name`` is a per-channel int8 weight."""
    dq = index.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in by_init or len(dq.input) < 2:
        return None
    q = index.array(dq.input[0])
    if q.dtype != np.int8 or q.ndim != 2 or int(attribute(dq, "axis", 1)) % 2 != out_axis or \
            attribute(dq, "block_size", 0) or not index.is_constant(dq.input[1]):
        return None
    scale = index.array(dq.input[1])
    if scale.dtype != np.float32 or scale.shape != (q.shape[out_axis],):
        return None
    if len(dq.input) > 2 and dq.input[2]:
        if not index.is_constant(dq.input[2]) or np.any(index.array(dq.input[2]) != 0):
            return None
    return dq, q, scale


def find_int8_candidates(model: Any, weight_initializers: set[str]) -> list[Int8Candidate]:
    """MatMul / plain Gemm nodes over per-channel int8 weights (zero point 0) among ``weight_initializers``,
    on float activations (an activation Q/DQ pair, static quantization, is left alone)."""
    index = GraphIndex(model)
    graph_outputs = {o.name for o in model.graph.output}
    where = {id(n): i for i, n in enumerate(index.nodes)}
    found = []
    for node in index.nodes:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        x_src = index.producer.get(node.input[0])
        if x_src is not None and x_src.op_type == "DequantizeLinear":
            continue
        gemm = node.op_type == "Gemm"
        if gemm and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                     or attribute(node, "beta", 1.0) != 1.0):
            continue
        trans_b = bool(gemm and attribute(node, "transB", 0))
        got = _int8_weight(index, node.input[1], weight_initializers, 0 if trans_b else 1)
        if got is None or len(index.consumers.get(node.input[1], [])) != 1:
            continue  # the dequantized weight read elsewhere too must stay
        dq, q, scale = got
        q = np.ascontiguousarray(q if trans_b else q.T)
        if gemm:
            bias = index.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if bias is not None and (bias.size != q.shape[0] or bias.dtype != np.float32):
                continue
            add = None
        else:
            bias, add = _fold_bias(index, node, q.shape[0], graph_outputs)
        pos = (where[id(node)],) + ((where[id(add)],) if add is not None else ()) + (where[id(dq)],)
        found.append(Int8Candidate(node, node.input[0], dq.input[0], q, scale.copy(),
                                   None if bias is None else bias.reshape(-1).astype(np.float32),
                                   add.output[0] if add is not None else node.output[0], pos,
                                   dq_inputs=tuple(i for i in dq.input if i), trans_b=trans_b))
    return found


def compress_int8_np(q: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crow_indices, col_indices, values [nnz, br, bc] int8) of an int8 [N, K] weight, as
    `sparsecc.kernels.compress_int8` packs it: block 1 is 1x4 row groups, else square blocks."""
    n, k = q.shape
    br, bc = (1, 4) if block == 1 else (block, block)
    tiles = q.reshape(n // br, br, k // bc, bc).transpose(0, 2, 1, 3)
    keep = (tiles != 0).any(axis=(2, 3))
    crow = np.zeros(n // br + 1, dtype=np.int32)
    crow[1:] = np.cumsum(keep.sum(1))
    return crow, np.nonzero(keep)[1].astype(np.int32), np.ascontiguousarray(tiles[keep], dtype=np.int8)


def int8_block_choices(q: np.ndarray) -> list[int]:
    """1x4 groups (1, when 4 divides K) and the widest square block whose stored blocks are `MIN_FILL` nonzero."""
    n, k = q.shape
    nnz = int((q != 0).sum())
    out = [1] if k % 4 == 0 else []
    for b in INT8_BLOCKS:
        if n % b or k % b or nnz == 0:
            continue
        stored = int((q.reshape(n // b, b, k // b, b) != 0).any(axis=(1, 3)).sum())
        if nnz >= MIN_FILL * stored * b * b:
            return out + [b]
    return out


def sparse_int8_model(q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, block: int,
                      act_scale: float = 0.0) -> Any:
    """A one-node model ``y = SparseMatMulInt8(x)`` of an int8 [N, K] weight with per-row ``scale``."""
    onnx = _deps.onnx()
    nh = onnx.numpy_helper
    crow, col, values = compress_int8_np(q, block)
    inits = [nh.from_array(crow, "crow"), nh.from_array(col, "col"), nh.from_array(values, "values"),
             nh.from_array(scale.astype(np.float32), "scales")]
    inputs = ["x", "crow", "col", "values", "scales"]
    if bias is not None:
        inits.append(nh.from_array(bias.astype(np.float32), "bias"))
        inputs.append("bias")
    node = onnx.helper.make_node(SPARSE_INT8_OP, inputs, ["y"], domain=CUSTOM_OP_DOMAIN, out_features=q.shape[0],
                                 in_features=q.shape[1], block=block, act_scale=float(act_scale))
    return _model([node], inits, q.shape[1], [("", 17), (CUSTOM_OP_DOMAIN, 1)])


def dense_int8_model(weight: np.ndarray, bias: np.ndarray | None) -> Any:
    """The layer as a user's dense int8 ONNX Runtime model: ``quantize_dynamic`` (per-channel QInt8 weights)
    of `dense_matmul_model`."""
    onnx = _deps.onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="sparsecc-int8-layer-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)  # the quantizer's pre-processing advice goes through the root logger
        try:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(dense_matmul_model(weight, bias), str(src))
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
            return onnx.load(str(dst))
        finally:
            root.setLevel(level)


def ort_int8_model(c: Int8Candidate) -> Any:
    """The one-node model ``y = com.microsoft.DynamicQuantizeMatMul(x)`` over the layer's integers and scales:
    the node `_to_ort_int8` writes into the graph."""
    onnx = _deps.onnx()
    nh = onnx.numpy_helper
    inits = [nh.from_array(np.ascontiguousarray(c.q.T), "q"), nh.from_array(c.scale.astype(np.float32), "scale"),
             nh.from_array(np.zeros(c.q.shape[0], np.int8), "zero_point")]
    inputs = ["x", "q", "scale", "zero_point"]
    if c.bias is not None:
        inits.append(nh.from_array(c.bias.astype(np.float32), "bias"))
        inputs.append("bias")
    node = onnx.helper.make_node(ORT_INT8_OP, inputs, ["y"], domain=ORT_DOMAIN)
    return _model([node], inits, c.q.shape[1], [("", 17), (ORT_DOMAIN, 1)])


def ort_int8_error(c: Int8Candidate, shape: tuple[int, ...]) -> float:
    """How far ONNX Runtime's int8 layer (`ort_int8_model`) lands from the fp32 layer on this CPU: the largest
    difference over the largest output, on standard-normal inputs and on their magnitudes (what follows a
    ReLU or GELU). A few thousandths where the CPU has VNNI; without it, ONNX Runtime's u8 x s8 kernels add
    pairs of products in saturating 16-bit lanes (``vpmaddubsw``), and full-range int8 weights can be off by
    a tenth or more."""
    session = open_session(ort_int8_model(c).SerializeToString(), session_options(1), None)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    w, bias = c.weight.astype(np.float64), (0.0 if c.bias is None else c.bias.astype(np.float64))
    worst = 0.0
    for feed in (x, np.abs(x)):
        want = feed.astype(np.float64) @ w.T + bias
        got = session.run(None, {"x": feed})[0]
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
    return worst


def _time_layer(c: Int8Candidate, shape: tuple[int, ...], library: str, threads: int, rounds: int,
                ort_int8: bool = True) -> dict[str, float]:
    """Median seconds of fp32 dense, ORT's dense int8 (unless ``ort_int8`` is False) and each int8 op layout
    for one layer, interleaved."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    w = c.weight
    models = {"dense": (dense_matmul_model(w, c.bias), None)}
    if ort_int8:
        models["dense_int8"] = (dense_int8_model(w, c.bias), None)
    for b in int8_block_choices(c.q):
        models["int8_g4" if b == 1 else f"int8_bsr{b}"] = (sparse_int8_model(c.q, c.scale, c.bias, b), library)
    return time_models(models, x, threads, rounds)


def _replace(model: Any, c: Int8Candidate, block: int, name: str, swaps: dict[int, Any]) -> dict[str, Any]:
    """A SparseMatMulInt8 node for the candidate, in ``swaps``; its DequantizeLinear goes with the node."""
    onnx = _deps.onnx()
    nh = onnx.numpy_helper
    crow, col, values = compress_int8_np(c.q, block)
    names = {k: f"{name}.sparsecc_{k}" for k in ("crow", "col", "values", "scales", "bias")}
    model.graph.initializer.extend([nh.from_array(crow, names["crow"]), nh.from_array(col, names["col"]),
                                    nh.from_array(values, names["values"]), nh.from_array(c.scale, names["scales"])])
    inputs = [c.x, names["crow"], names["col"], names["values"], names["scales"]]
    if c.bias is not None:
        model.graph.initializer.append(nh.from_array(c.bias.astype(np.float32), names["bias"]))
        inputs.append(names["bias"])
    node = onnx.helper.make_node(SPARSE_INT8_OP, inputs, [c.output], name=f"{name}.sparsecc", domain=CUSTOM_OP_DOMAIN,
                                 out_features=c.q.shape[0], in_features=c.q.shape[1], block=block, act_scale=0.0)
    swaps[c.pos[0]] = node
    for p in c.pos[1:]:
        swaps[p] = None
    return {"node": node.name, "format": "int8 1x4 groups" if block == 1 else f"int8 bsr {block}x{block}",
            "block": block, "crow_indices": names["crow"], "col_indices": names["col"], "values": names["values"],
            "scales": names["scales"], "bias": names["bias"] if c.bias is not None else None,
            "stored": int(values.size), "shape": [int(d) for d in c.q.shape], "replaced": c.node.op_type,
            "op": SPARSE_INT8_OP, "act_scale": 0.0, "torch_shape": [int(d) for d in c.q.shape]}


ORT_INT8_OP, ORT_DOMAIN = "DynamicQuantizeMatMul", "com.microsoft"


def _to_ort_int8(model: Any, c: Int8Candidate, name: str, prov: dict[str, Any], swaps: dict[int, Any]
                 ) -> dict[str, Any]:
    """The layer as ONNX Runtime's own dense int8 kernel (``com.microsoft.DynamicQuantizeMatMul``, what its
    ``quantize_dynamic`` produces) over the program's integers and scales, in ``swaps``. It reads them [K, N]:
    a Gemm's [N, K] integers are stored again transposed, and provenance follows them."""
    onnx = _deps.onnx()
    inputs = list(c.dq_inputs[:3])  # [K, N] integers, per-column scales, zero points (0) when stored
    if c.trans_b:
        inputs[0] = f"{name}.ort_int8_kn"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(c.q.T), inputs[0]))
        prov.update(initializer=inputs[0], perm=[1, 0], layout="transposed [in, out]",
                    onnx_reduction_axis=0)
    if len(inputs) < 3:
        zero = f"{name}.ort_int8_zero_point"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(c.q.shape[0], np.int8), zero))
        inputs.append(zero)
    if c.bias is not None:
        model.graph.initializer.append(onnx.numpy_helper.from_array(c.bias.astype(np.float32), f"{name}.ort_int8_bias"))
        inputs.append(f"{name}.ort_int8_bias")
    node = onnx.helper.make_node(ORT_INT8_OP, [c.x, *inputs], [c.output], name=f"{name}.ort_int8", domain=ORT_DOMAIN)
    swaps[c.pos[0]] = node
    for p in c.pos[1:]:
        swaps[p] = None
    return {"node": node.name, "op": f"{ORT_DOMAIN}.{ORT_INT8_OP}"}


def apply_int8_custom_ops(model: Any, provenance: dict[str, dict[str, Any]], library: str, *,
                          example: Sequence[Any] | None = None, input_specs: Sequence[tuple[str, str, int]] = (),
                          threads: int = 1, rounds: int = 7, margin: float = DEFAULT_MARGIN,
                          tokens: int | None = None) -> list[dict[str, Any]]:
    """Rewrite, in place, each int8 sparse layer whose op measures faster than both dense references;
    return one record per layer timed (as `custom_ops.apply_custom_ops` does for fp32)."""
    by_init = {e["initializer"]: fqn for fqn, e in provenance.items() if e.get("initializer") and e.get("quantized")}
    found = find_int8_candidates(model, set(by_init))
    cands = [c for c in found if float((c.q == 0).mean()) >= MIN_SPARSITY and int8_block_choices(c.q)]
    seen = {} if tokens or not cands else _input_shapes(model, [c.x for c in cands], example, input_specs)
    layers, swaps = [], {}
    timed = {id(c) for c in cands}
    tol = INT8_RTOL_PER_LAYER

    def ort_int8_fits(c: Int8Candidate, fqn: str, shape: tuple[int, ...]) -> bool:
        """Whether ONNX Runtime's int8 layer is within one int8 layer's parity tolerance here; if not, why."""
        err = ort_int8_error(c, shape)
        if err > tol:
            provenance[fqn]["ort_int8_rejected"] = (
                f"ONNX Runtime's int8 layer is off by {err:.3f} of the largest output on this CPU (allowed "
                f"{tol:.3f}: its u8 x s8 kernels saturate without VNNI); the layer keeps fp32 arithmetic")
        return err <= tol

    for c in found:  # too dense for a sparse kernel: ONNX Runtime's int8 layer, as quantize_dynamic would give
        fqn = by_init[c.initializer]
        if id(c) not in timed and ort_int8_fits(c, fqn, _timing_shape(c, None, tokens)):  # type: ignore[arg-type]
            provenance[fqn]["ort_int8"] = _to_ort_int8(model, c, fqn, provenance[fqn], swaps)
            provenance[fqn]["storage"] = f"int8 for {ORT_DOMAIN}.{ORT_INT8_OP}"
    for c in cands:
        fqn = by_init[c.initializer]
        shape = _timing_shape(c, seen.get(c.x), tokens)  # type: ignore[arg-type]
        med = _time_layer(c, shape, library, threads, rounds, ort_int8=ort_int8_fits(c, fqn, shape))
        ref = min((k for k in ("dense", "dense_int8") if k in med), key=med.__getitem__)
        best = min((k for k in med if k.startswith("int8_")), key=med.__getitem__)
        faster = med[best] <= margin * med[ref]
        entry: dict[str, Any] = {"fqn": fqn, "node": c.node.name, "op": SPARSE_INT8_OP,
                                 "tokens": int(np.prod(shape)) // c.q.shape[1], "median_s": med, "reference": ref,
                                 "choice": best if faster else ref, "speedup": med[ref] / med[best]}
        if faster:
            entry["custom_op"] = _replace(model, c, 1 if best == "int8_g4" else int(best[8:]), fqn, swaps)
            provenance[fqn]["custom_op"] = entry["custom_op"]
            provenance[fqn]["storage"] = f"compressed ({entry['custom_op']['format']}) for " \
                                         f"{CUSTOM_OP_DOMAIN}.{SPARSE_INT8_OP}"
        elif ref == "dense_int8":  # the int8 layer ONNX Runtime runs fastest, not a weight-only DequantizeLinear
            entry["ort_int8"] = _to_ort_int8(model, c, fqn, provenance[fqn], swaps)
            provenance[fqn]["storage"] = f"int8 for {ORT_DOMAIN}.{ORT_INT8_OP}"
        layers.append(entry)
    if swaps:
        _rebuild(model, swaps)
        domains = {o.domain for o in model.opset_import}
        used = {n.domain for n in model.graph.node} & {CUSTOM_OP_DOMAIN, ORT_DOMAIN}
        for domain in used - domains:
            model.opset_import.append(_deps.onnx().helper.make_opsetid(domain, 1))
    return layers


def int8_chain_depth(model: Any) -> int:
    """The most layers that quantize activations at run time on one path through the graph, so the parity
    tolerance grows with it (`sparsecc.verify.parity.int8_parity_tolerance`): ``SparseMatMulInt8``,
    ``DynamicQuantizeMatMul``, and a ``MatMul`` / ``Gemm`` reading int8 weights through ``DequantizeLinear``,
    which ONNX Runtime fuses into ``MatMulNBits`` and, at its default accuracy level (4), runs on activations
    quantized in blocks of 32 where the CPU has that kernel (AVX2 without VNNI here: 0.6% of the output scale
    on a two-layer MLP)."""
    int8_weights = {t.name for t in model.graph.initializer if t.data_type == _deps.onnx().TensorProto.INT8}
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_weights
                   for o in n.output}
    depth: dict[str, int] = {}
    deepest = 0
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        d = max((depth.get(i, 0) for i in node.input if i), default=0)
        quantizes = (node.op_type, node.domain) in ((SPARSE_INT8_OP, CUSTOM_OP_DOMAIN), (ORT_INT8_OP, ORT_DOMAIN)) \
            or (node.op_type in ("MatMul", "Gemm") and any(i in dequantized for i in node.input[1:2]))
        d += int(quantizes)
        for o in node.output:
            depth[o] = d
        deepest = max(deepest, d)
    return deepest
