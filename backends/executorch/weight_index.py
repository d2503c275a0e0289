"""Find where each prunable weight ended up in the ``.pte``, and in which layout.

Delegated weights: XNNPACK's serializer writes each node's filter into the
program's named data (keyed by the SHA-256 of its bytes) in XNNPACK's own
layout, and tags the node with the debug handle of the edge node it came
from. The index follows that handle back to the delegate's original
subgraph, and from the consuming node to the weight's FQN. Layouts:

- ``XNNFullyConnected``: ``[out, in]`` as in the program, or ``[in, out]``
  when the node carries ``XNN_FLAG_TRANSPOSE_WEIGHTS``;
- ``XNNConv2d``: ``[out, kh, kw, in/groups]`` (NHWC filter; a conv1d is
  first unsqueezed to ``kh = 1``);
- ``XNNDepthwiseConv2d``: ``[1, kh, kw, out]``.

Weights that stay outside delegates are constant tensors of the plan, found
by comparing their contents with the program's weight (as is, or
transposed). Each entry records whether the stored values equal the
program's weight exactly (``verbatim``); XNNPACK folds a following
BatchNorm into the conv filter, which rescales output channels but keeps
every zero.

Weights replaced by a sparsecc custom op (the ``executorch-custom-ops``
target) are stored compressed as three plan constants; `index_custom_ops`
finds each by its contents.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from sparsecc.core.analyze import PrunableWeight

from .delegation import XNNPACK_ID, lowered_modules, op_name
from .pte import PteReader

__all__ = ["index_weights", "index_custom_ops", "XNN_LAYOUTS"]

_XNN_FLAG_TRANSPOSE_WEIGHTS = 0x1
_STATE = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def _as_4d(w: torch.Tensor) -> torch.Tensor:
    return w.unsqueeze(2) if w.dim() == 3 else w


# XNNode type -> (layout, output axis, reduction axis, program weight -> stored layout), per flags.
def _fc_layout(flags: int) -> tuple[str, int, int, Callable[[torch.Tensor], torch.Tensor]]:
    if flags & _XNN_FLAG_TRANSPOSE_WEIGHTS:
        return "[in, out] (fully connected, transposed)", 1, 0, lambda w: w.t()
    return "[out, in] (fully connected, as in the program)", 0, 1, lambda w: w


XNN_LAYOUTS: dict[str, Callable[[int], tuple[str, int, int, Callable[[torch.Tensor], torch.Tensor]]]] = {
    "XNNFullyConnected": _fc_layout,
    "XNNConv2d": lambda flags: (
        "[out, kh, kw, in/groups] (NHWC conv filter)", 0, 3, lambda w: _as_4d(w).permute(0, 2, 3, 1)
    ),
    "XNNDepthwiseConv2d": lambda flags: (
        "[1, kh, kw, out] (depthwise conv filter)", 3, 0, lambda w: _as_4d(w).permute(1, 2, 3, 0)
    ),
}


def _targets(program: ExportedProgram) -> dict[str, str]:
    return {s.arg.name: s.target for s in program.graph_signature.input_specs if s.kind in _STATE}


def _weight_of(node: torch.fx.Node, targets: Mapping[str, str], wanted: Mapping[str, Any]) -> str | None:
    """The FQN of the wanted weight that ``node`` reads (directly or through one copy op)."""
    todo = [a for a in node.all_input_nodes]
    while todo:
        a = todo.pop(0)
        if a.op == "placeholder":
            if targets.get(a.name) in wanted:
                return targets[a.name]
        elif a.op == "call_function" and len(a.all_input_nodes) == 1:
            todo.extend(a.all_input_nodes)
        elif a.op == "call_function" and "dequantize_per_channel" in str(a.target):
            todo.append(a.args[0])  # int8 weight integers (see `int8`): follow them, not the scales
    return None


def _folded_note(node: torch.fx.Node | None) -> str:
    if node is not None and any("batch_norm" in op_name(u) for u in node.users):
        return "BatchNorm folded into the stored filter: values rescaled per output channel, zeros kept"
    return "stored values differ from the program's weight"


def _xnnpack_entries(
    edge_program: ExportedProgram, reader: PteReader, wanted: Mapping[str, PrunableWeight],
    values: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, Any]]:
    payloads = reader.delegates()
    out: dict[str, dict[str, Any]] = {}
    for _name, lm in lowered_modules(edge_program):
        if lm.backend_id != XNNPACK_ID:
            continue
        index = next((i for i, (_, blob) in enumerate(payloads) if blob == bytes(lm.processed_bytes)), None)
        if index is None:
            continue
        graph = reader.xnnpack_graph(index)
        om = lm.original_module
        targets = _targets(om)
        by_handle = {n.meta.get("debug_handle"): n for n in om.graph.nodes if n.op == "call_function"}
        for xnode in graph["xnodes"]:
            layout_of = XNN_LAYOUTS.get(xnode["xnode_union_type"])
            if layout_of is None:
                continue
            union = xnode["xnode_union"]
            layout, out_axis, red_axis, to_stored = layout_of(int(union.get("flags", 0)))
            value_id = int(union["filter_id"])
            stored, key = reader.xnnpack_tensor(index, value_id)
            node = by_handle.get(xnode.get("debug_handle"))
            fqn = _weight_of(node, targets, wanted) if node is not None else None
            if fqn is None:  # no handle: fall back to the exact bytes
                fqn = next((f for f, w in values.items() if f not in out and
                            _sha256(to_stored(w).to(stored.dtype)) == key), None)
            if fqn is None or fqn in out:
                continue
            expected = to_stored(values[fqn]).to(stored.dtype)
            verbatim = expected.shape == stored.shape and torch.equal(expected, stored)
            out[fqn] = {
                "where": "xnnpack", "delegate": index, "value": value_id, "named_key": key,
                "xnode": xnode["xnode_union_type"], "dims": list(stored.shape), "dtype": str(stored.dtype),
                "layout": layout, "output_axis": out_axis, "reduction_axis": red_axis,
                "verbatim": verbatim, "note": "" if verbatim else _folded_note(node),
            }
    return out


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _constant_entries(
    reader: PteReader, wanted: Mapping[str, PrunableWeight], values: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    consts = reader.constant_tensors()
    for fqn, w in wanted.items():
        value = values[fqn]
        candidates = [(value, "as in the program", w.output_axis, w.reduction_axis)]
        if value.dim() == 2:
            candidates.append((value.t(), "transposed", w.reduction_axis, w.output_axis))
        for c in consts:
            if c.dtype != value.dtype or len(c.sizes) != value.dim():
                continue
            stored = None
            for cand, layout, out_axis, red_axis in candidates:
                if tuple(cand.shape) != c.sizes:
                    continue
                stored = reader.constant(c) if stored is None else stored
                if torch.equal(stored, cand):
                    out[fqn] = {
                        "where": "constant", "value": c.value_index, "buffer": c.buffer_index,
                        "dims": list(c.sizes), "dtype": str(c.dtype), "layout": layout,
                        "output_axis": out_axis, "reduction_axis": red_axis, "verbatim": True, "note": "",
                    }
                    break
            if fqn in out:
                break
    return out


def index_weights(
    edge_program: ExportedProgram,
    reader: PteReader,
    weights: Sequence[PrunableWeight],
    values: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, Any]]:
    """``{fqn: entry}`` for every prunable weight; ``where`` is ``xnnpack``, ``constant`` or ``missing``."""
    wanted = {w.fqn: w for w in weights if w.fqn in values}
    values = {f: v.detach().cpu().contiguous() for f, v in values.items() if f in wanted}
    index = _xnnpack_entries(edge_program, reader, wanted, values)
    rest = {f: w for f, w in wanted.items() if f not in index}
    index.update(_constant_entries(reader, rest, values))
    for w in weights:
        index.setdefault(w.fqn, {"where": "missing", "note": "not found in the .pte (transformed while lowering?)"})
    return index


def index_custom_ops(reader: PteReader, compressed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{fqn: entry}`` for the weights a sparsecc custom op holds compressed (``where``: ``custom_op``).

    Each of the three tensors (crow indices, column indices, values) is found
    among the plan's constants by its contents; ``compressed`` maps each FQN to
    ``{"weight": CompressedWeight, "torch_shape", "op", "bn"}`` from lowering.
    """
    by_hash: dict[tuple, Any] = {}
    for c in reader.constant_tensors():
        if c.dtype in (torch.int32, torch.float32):
            by_hash.setdefault((c.dtype, c.sizes, _sha256(reader.constant(c))), c)
    out: dict[str, dict[str, Any]] = {}
    for fqn, rec in compressed.items():
        cw = rec["weight"]
        parts = {}
        for role, t in (("crow_indices", cw.crow_indices), ("col_indices", cw.col_indices), ("values", cw.values)):
            c = by_hash.get((t.dtype, tuple(t.shape), _sha256(t)))
            if c is not None:
                parts[role] = {"value": c.value_index, "buffer": c.buffer_index, "dims": list(c.sizes)}
        fmt = "CSR" if cw.block == 1 else f"BSR {cw.block}x{cw.block}"
        if len(parts) < 3:
            out[fqn] = {"where": "missing", "note": f"the {fmt} constants of {rec['op']} are not in the .pte"}
            continue
        out[fqn] = {
            "where": "custom_op", "op": rec["op"] + ".out", "format": fmt, "block": cw.block, **parts,
            "dims": list(cw.shape), "torch_shape": list(rec["torch_shape"]), "dtype": str(cw.values.dtype),
            "layout": f"[out, in] compressed {fmt} ({rec['op']})", "output_axis": 0, "reduction_axis": 1,
            "verbatim": rec.get("bn") is None,
            "note": "" if rec.get("bn") is None else
            "BatchNorm folded into the stored weight: values rescaled per output channel, zeros kept",
        }
    return out
