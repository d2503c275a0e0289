"""Replace a sparse layer by sparsecc's ONNX Runtime custom op where it measures faster.

The custom ops (``libsparsecc_ort.so``, `sparsecc.kernels.ort_library`) run
sparsecc's CPU kernels inside ONNX Runtime on a weight stored compressed in
the file: ``crow_indices`` / ``col_indices`` (int32) and ``values`` (CSR
``[nnz]`` or BSR ``[nnz_blocks, B, B]``) initializers, attributes
``out_features``, ``in_features``, ``block``.

- ``sparsecc.SparseMatMul`` replaces a ``MatMul`` by a constant [K, N] weight
  (a bias ``Add`` right after it is folded in) or a plain ``Gemm``;
- ``sparsecc.SparseConv1x1`` replaces a 1x1 ``Conv`` (stride 1, no padding,
  one group; bias kept) on NCHW data, as in MobileNet-style networks.

Per layer the choice is measured, as the torch-sparse backend does: ONNX
Runtime dense (the one node alone, [+ ``Add``]) against the custom op in
CSR and in the widest BSR block that the zeros fill, on the layer's own
input shape (read from a run of the model on the example inputs), timed
interleaved; the op replaces the layer only when it is faster by the margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sparsecc.core.ort_session import CUSTOM_OP_DOMAIN, feed_order, open_session, session_options
from sparsecc.core.timing import time_interleaved

from . import _deps
from .graph_index import GraphIndex, attribute

__all__ = ["SPARSE_OP", "SPARSE_CONV_OP", "BLOCKS", "Candidate", "find_candidates", "compress_np", "decompress_np",
           "block_choices", "sparse_matmul_model", "dense_matmul_model", "time_models", "apply_custom_ops"]

SPARSE_OP = "SparseMatMul"
SPARSE_CONV_OP = "SparseConv1x1"
BLOCKS = (16, 8, 4, 2)  # BSR blocks the kernels have code for, widest first
MIN_FILL = 0.75  # a block format is tried when the stored blocks are at least this full of nonzeros
DEFAULT_MARGIN = 0.95  # sparse must take at most this fraction of dense time
DEFAULT_TOKENS = 128
MIN_SPARSITY = 0.5  # below this no sparse format can win: such layers are not timed


@dataclass
class Candidate:
    """One MatMul / Gemm / 1x1 Conv whose constant weight is a prunable weight: ``weight`` is [N, K]."""

    node: Any
    x: str
    initializer: str
    weight: np.ndarray
    bias: np.ndarray | None
    bias_node: Any  # the Add folded in, or None
    output: str
    pos: tuple[int, ...] = ()  # positions in graph.node of the node (and the Add) replaced
    conv1x1: bool = False  # NCHW input [B, K, H, W], output [B, N, H, W]

    @property
    def op(self) -> str:
        return SPARSE_CONV_OP if self.conv1x1 else SPARSE_OP


def _fold_bias(index: GraphIndex, node: Any, n: int, graph_outputs: set[str]) -> tuple[np.ndarray | None, Any]:
    out = node.output[0]
    users = index.consumers.get(out, [])
    if out in graph_outputs or len(users) != 1 or users[0][0].op_type != "Add":
        return None, None
    add = users[0][0]
    other = add.input[1 - users[0][1]]
    if not index.is_constant(other):
        return None, None
    b = index.array(other)
    if b.dtype != np.float32 or b.size != n or b.shape[-1] != n:  # [N] or [1, .., N]: a per-output bias
        return None, None
    return b.reshape(-1), add


def _is_pointwise_conv(node: Any, w: np.ndarray) -> bool:
    """A Conv that is a per-pixel product: 1x1 kernel, stride 1, no padding, no dilation, one group."""
    if w.ndim != 4 or w.shape[2:] != (1, 1) or attribute(node, "group", 1) != 1:
        return False
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return False
    return all(all(int(v) == want for v in (attribute(node, a, None) or [])) for a, want in
               (("strides", 1), ("pads", 0), ("dilations", 1), ("kernel_shape", 1)))


def find_candidates(model: Any, weight_initializers: set[str]) -> list[Candidate]:
    """MatMul (constant [K, N] right operand), plain Gemm and 1x1 Conv nodes over the given float32 initializers."""
    index = GraphIndex(model)
    graph_outputs = {o.name for o in model.graph.output}
    where = {id(n): i for i, n in enumerate(index.nodes)}
    found = []
    for node in index.nodes:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or \
                node.input[1] not in weight_initializers:
            continue
        w = index.array(node.input[1])
        if w.dtype != np.float32:
            continue
        if node.op_type == "Conv":
            if not _is_pointwise_conv(node, w):
                continue
            bias = index.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            found.append(Candidate(node, node.input[0], node.input[1], np.ascontiguousarray(w[:, :, 0, 0]),
                                   None if bias is None else bias.reshape(-1).astype(np.float32), None,
                                   node.output[0], (where[id(node)],), conv1x1=True))
            continue
        if w.ndim != 2:
            continue
        if node.op_type == "MatMul":
            weight = np.ascontiguousarray(w.T)
            bias, add = _fold_bias(index, node, weight.shape[0], graph_outputs)
            found.append(Candidate(node, node.input[0], node.input[1], weight, bias, add,
                                   add.output[0] if add is not None else node.output[0],
                                   (where[id(node)],) + ((where[id(add)],) if add is not None else ())))
            continue
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
            continue
        weight = np.ascontiguousarray(w if attribute(node, "transB", 0) else w.T)
        bias = index.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias.size != weight.shape[0]:
            continue  # a broadcast C other than a per-output bias stays a Gemm
        found.append(Candidate(node, node.input[0], node.input[1], weight,
                               None if bias is None else bias.reshape(-1).astype(np.float32), None, node.output[0],
                               (where[id(node)],)))
    return found


def compress_np(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crow_indices, col_indices, values) of a [N, K] weight: CSR for block 1, else BSR keeping nonzero blocks."""
    n, k = weight.shape
    if block == 1:
        keep = weight != 0
        values = weight[keep].astype(np.float32)
    else:
        tiles = weight.reshape(n // block, block, k // block, block).transpose(0, 2, 1, 3)
        keep = (tiles != 0).any(axis=(2, 3))
        values = np.ascontiguousarray(tiles[keep], dtype=np.float32)
    crow = np.zeros(keep.shape[0] + 1, dtype=np.int32)
    crow[1:] = np.cumsum(keep.sum(1))
    return crow, np.nonzero(keep)[1].astype(np.int32), values


def decompress_np(crow: np.ndarray, col: np.ndarray, values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The dense [N, K] weight of a CSR (values [nnz]) or block (values [nnz, br, bc]: BSR, int8 1x4 groups) triple."""
    n, k = int(shape[0]), int(shape[1])
    br, bc = (1, 1) if values.ndim == 1 else (int(values.shape[1]), int(values.shape[2]))
    tiles = np.zeros((n // br, k // bc, br, bc), dtype=values.dtype)
    rows = np.repeat(np.arange(n // br), np.diff(crow.astype(np.int64)))
    tiles[rows, col] = values.reshape(-1, br, bc)
    return tiles.transpose(0, 2, 1, 3).reshape(n, k)


def block_choices(weight: np.ndarray) -> list[int]:
    """CSR (1) and the widest BSR block whose stored blocks are at least `MIN_FILL` nonzero."""
    n, k = weight.shape
    nnz = int((weight != 0).sum())
    for b in BLOCKS:
        if n % b or k % b or nnz == 0:
            continue
        stored = int((weight.reshape(n // b, b, k // b, b) != 0).any(axis=(1, 3)).sum())
        if nnz >= MIN_FILL * stored * b * b:
            return [1, b]
    return [1]


def _model(nodes: list, inits: list, k: int, opsets: list, conv1x1: bool = False) -> Any:
    onnx = _deps.onnx()
    h = onnx.helper
    dims = ["batch", k, "height", "width"] if conv1x1 else ["tokens", k]
    graph = h.make_graph(nodes, "layer", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid(d, v) for d, v in opsets])


def sparse_matmul_model(weight: np.ndarray, bias: np.ndarray | None, block: int, conv1x1: bool = False) -> Any:
    """A one-node model ``y = SparseMatMul(x)`` (``SparseConv1x1`` with ``conv1x1``; opset 17 + the sparsecc domain)."""
    onnx = _deps.onnx()
    nh = onnx.numpy_helper
    crow, col, values = compress_np(weight, block)
    inits = [nh.from_array(crow, "crow"), nh.from_array(col, "col"), nh.from_array(values, "values")]
    inputs = ["x", "crow", "col", "values"]
    if bias is not None:
        inits.append(nh.from_array(bias.astype(np.float32), "bias"))
        inputs.append("bias")
    node = onnx.helper.make_node(SPARSE_CONV_OP if conv1x1 else SPARSE_OP, inputs, ["y"], domain=CUSTOM_OP_DOMAIN,
                                 out_features=weight.shape[0], in_features=weight.shape[1], block=block)
    return _model([node], inits, weight.shape[1], [("", 17), (CUSTOM_OP_DOMAIN, 1)], conv1x1)


def dense_matmul_model(weight: np.ndarray, bias: np.ndarray | None, conv1x1: bool = False) -> Any:
    """The same layer as ONNX Runtime runs it dense: ``MatMul`` by the [K, N] weight, then ``Add``; with
    ``conv1x1`` a 1x1 ``Conv`` (bias as its third input)."""
    onnx = _deps.onnx()
    nh, h = onnx.numpy_helper, onnx.helper
    if conv1x1:
        inits = [nh.from_array(np.ascontiguousarray(weight[:, :, None, None]), "w")]
        if bias is not None:
            inits.append(nh.from_array(bias.astype(np.float32), "bias"))
        node = h.make_node("Conv", ["x", "w"] + (["bias"] if bias is not None else []), ["y"], kernel_shape=[1, 1])
        return _model([node], inits, weight.shape[1], [("", 17)], True)
    inits = [nh.from_array(np.ascontiguousarray(weight.T), "w")]
    nodes = [h.make_node("MatMul", ["x", "w"], ["y" if bias is None else "xw"])]
    if bias is not None:
        inits.append(nh.from_array(bias.astype(np.float32), "bias"))
        nodes.append(h.make_node("Add", ["xw", "bias"], ["y"]))
    return _model(nodes, inits, weight.shape[1], [("", 17)])


def _input_shapes(model: Any, names: list[str], example: Sequence[Any] | None,
                  input_specs: Sequence[tuple[str, str, int]]) -> dict[str, tuple[int, ...]]:
    """The shape of each named activation, from one dense run on ``example``."""
    if not example:
        return {}
    onnx = _deps.onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in dict.fromkeys(names) if n not in have)
    sess = open_session(probe.SerializeToString(), session_options(1))
    args = sess.get_inputs()
    order = feed_order(list(input_specs), args)
    feed = {a.name: np.asarray(example[i].detach().cpu().numpy() if hasattr(example[i], "detach") else example[i])
            for a, i in zip(args, order)}
    outs = sess.run(list(dict.fromkeys(names)), feed)
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(dict.fromkeys(names), outs)}


def _timing_shape(c: Candidate, seen: tuple[int, ...] | None, tokens: int | None) -> tuple[int, ...]:
    """The input a layer is timed on: ``tokens`` rows (pixels of one image for a 1x1 conv) when given, else
    its own shape from the example run, else `DEFAULT_TOKENS` rows."""
    k = c.weight.shape[1]
    if tokens or not seen:
        rows = int(tokens or DEFAULT_TOKENS)
        return (1, k, 1, rows) if c.conv1x1 else (rows, k)
    return seen if c.conv1x1 else (int(np.prod(seen[:-1])), k)


def time_models(models: dict[str, tuple[Any, str | None]], x: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """Median seconds of one-node models ``{name: (model, custom-op library or None)}`` on input ``x``, interleaved."""
    sessions = {k: open_session(m.SerializeToString(), session_options(threads), lib) for k, (m, lib) in models.items()}
    variants = {k: (lambda s=s: s.run(None, {"x": x})) for k, s in sessions.items()}
    return {k: float(v) for k, v in time_interleaved(variants, warmup=2, rounds=rounds, sample_s=0.01).medians().items()}


def _time_layer(c: Candidate, shape: tuple[int, ...], library: str, threads: int, rounds: int) -> dict[str, Any]:
    """Median seconds of dense and of each sparse format for one layer, interleaved."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    models = {"dense": (dense_matmul_model(c.weight, c.bias, c.conv1x1), None)}
    for b in block_choices(c.weight):
        models["csr" if b == 1 else f"bsr{b}"] = (sparse_matmul_model(c.weight, c.bias, b, c.conv1x1), library)
    return time_models(models, x, threads, rounds)


def _replace(model: Any, c: Candidate, block: int, name: str, swaps: dict[int, Any]) -> dict[str, Any]:
    """A SparseMatMul / SparseConv1x1 node for the candidate, in ``swaps`` (graph.node position -> new node or None)."""
    onnx = _deps.onnx()
    nh = onnx.numpy_helper
    graph = model.graph
    crow, col, values = compress_np(c.weight, block)
    names = {k: f"{name}.sparsecc_{k}" for k in ("crow", "col", "values", "bias")}
    graph.initializer.extend([nh.from_array(crow, names["crow"]), nh.from_array(col, names["col"]),
                              nh.from_array(values, names["values"])])
    inputs = [c.x, names["crow"], names["col"], names["values"]]
    if c.bias is not None:
        graph.initializer.append(nh.from_array(c.bias.astype(np.float32), names["bias"]))
        inputs.append(names["bias"])
    node = onnx.helper.make_node(c.op, inputs, [c.output], name=f"{name}.sparsecc", domain=CUSTOM_OP_DOMAIN,
                                 out_features=c.weight.shape[0], in_features=c.weight.shape[1], block=block)
    swaps[c.pos[0]] = node
    for p in c.pos[1:]:
        swaps[p] = None
    return {"node": node.name, "format": "csr" if block == 1 else f"bsr {block}x{block}", "block": block,
            "crow_indices": names["crow"], "col_indices": names["col"], "values": names["values"],
            "bias": names["bias"] if c.bias is not None else None, "stored": int(values.size),
            "shape": [int(d) for d in c.weight.shape], "replaced": c.node.op_type, "op": c.op,
            "torch_shape": [int(d) for d in c.weight.shape] + ([1, 1] if c.conv1x1 else [])}


def _rebuild(model: Any, swaps: dict[int, Any]) -> None:
    """Swap the nodes in, in place of the old ones (same order), and drop initializers no node reads any more."""
    graph = model.graph
    nodes = []
    for i, n in enumerate(graph.node):
        new = swaps.get(i, n)
        if new is not None:  # copies: messages still inside graph.node are not kept across its clearing
            nodes.append(type(n)())
            nodes[-1].CopyFrom(new)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = []
    for t in graph.initializer:
        if t.name in read:
            keep.append(type(t)())
            keep[-1].CopyFrom(t)
    del graph.initializer[:]
    graph.initializer.extend(keep)


def apply_custom_ops(model: Any, provenance: dict[str, dict[str, Any]], library: str, *,
                     example: Sequence[Any] | None = None, input_specs: Sequence[tuple[str, str, int]] = (),
                     threads: int = 1, rounds: int = 7, margin: float = DEFAULT_MARGIN,
                     tokens: int | None = None) -> dict[str, Any]:
    """Rewrite, in place, each prunable layer whose custom op measures faster; return the manifest record.

    ``provenance`` (per weight FQN) names the initializers that may be replaced and
    gains, for each one replaced, a ``custom_op`` entry (node, format, initializers).
    ``tokens`` fixes the timing's row count (pixels per image for a 1x1 conv); by
    default each layer is timed on its own input shape, from one run on ``example``,
    else on `DEFAULT_TOKENS` rows.
    """
    by_init = {e["initializer"]: fqn for fqn, e in provenance.items() if e.get("initializer")}
    cands = find_candidates(model, set(by_init))
    seen = {} if tokens else _input_shapes(model, [c.x for c in cands], example, input_specs)
    layers, swaps = [], {}
    for c in cands:
        if float((c.weight == 0).mean()) < MIN_SPARSITY:
            continue
        fqn = by_init[c.initializer]
        shape = _timing_shape(c, seen.get(c.x), tokens)
        t = int(np.prod(shape)) // c.weight.shape[1]
        med = _time_layer(c, shape, library, threads, rounds)
        best = min((k for k in med if k != "dense"), key=med.__getitem__)
        faster = med[best] <= margin * med["dense"]
        entry: dict[str, Any] = {"fqn": fqn, "node": c.node.name, "op": c.op, "tokens": t, "median_s": med, "choice":
                                 best if faster else "dense", "speedup": med["dense"] / med[best]}
        if faster:
            block = 1 if best == "csr" else int(best[3:])
            entry["custom_op"] = _replace(model, c, block, fqn, swaps)
            provenance[fqn]["custom_op"] = entry["custom_op"]
            provenance[fqn]["storage"] = f"compressed ({entry['custom_op']['format']}) for {CUSTOM_OP_DOMAIN}.{c.op}"
        layers.append(entry)
    if swaps:
        _rebuild(model, swaps)
        opsets = {o.domain for o in model.opset_import}
        if CUSTOM_OP_DOMAIN not in opsets:
            model.opset_import.append(_deps.onnx().helper.make_opsetid(CUSTOM_OP_DOMAIN, 1))
    return {"domain": CUSTOM_OP_DOMAIN, "ops": sorted({e["op"] for e in layers if "custom_op" in e}), "threads": threads, "margin": margin, "layers": layers,
            "replaced": sum("custom_op" in e for e in layers)}
