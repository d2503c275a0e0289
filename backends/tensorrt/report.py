"""Per-layer 2:4 report: pattern verified in the ONNX -> eligible in TensorRT -> sparse kernel picked.

Each prunable weight that feeds a Conv, MatMul or Gemm gets one row that
follows it through the three steps and, where it stops, says why:

1. the ONNX file holds it 2:4 along the axis TensorRT reads (`check_nm`);
2. TensorRT's builder listed its layer as eligible for sparse math;
3. TensorRT picked a sparse kernel for it (build log, confirmed by the
   inspector's tactic name when the engine info is at hand) — or timed a
   dense kernel faster, which small layers usually are.

`expected_layers` computes step 1 at compile time (it goes into the bundle
as ``expected_sparse_layers.json``); `layer_report` adds steps 2 and 3 from
a build log and engine info, on the device or wherever they were copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .build_log import SparsityLog
from .inspector import EngineInfo, EngineLayer
from .layer_map import LayerNameMap, is_myelin_region

if TYPE_CHECKING:
    import onnx

__all__ = ["LayerRow", "expected_layers", "layer_report", "report_markdown", "report_summary",
           "SMALL_LAYER", "STATUS_SPARSE", "STATUS_DENSE", "STATUS_NOT_ELIGIBLE", "STATUS_NOT_2_4", "STATUS_UNKNOWN"]

# TensorRT times sparse against dense kernels; below this many channels the
# dense kernel usually wins (the sparse one's metadata overhead does not pay).
SMALL_LAYER = 256

STATUS_SPARSE = "sparse"
STATUS_DENSE = "dense: timed faster"
STATUS_NOT_ELIGIBLE = "not eligible in TensorRT"
STATUS_NOT_2_4 = "not 2:4 in the ONNX"
STATUS_UNKNOWN = "unknown: no build log"


@dataclass
class LayerRow:
    layer: str
    fqn: str
    onnx_node: str
    op: str
    k: int | None
    n: int | None
    onnx_2_4: bool
    eligible: bool | None
    picked: bool | None
    status: str
    reason: str
    trt_layer: str = ""
    tactic: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _k_n(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    shape, axis = entry.get("shape") or [], entry.get("axis")
    if axis is None or not shape:
        return None, None
    k = int(shape[axis])
    if entry.get("op") == "Conv":
        return k, int(shape[0])
    others = [int(s) for i, s in enumerate(shape) if i != axis]
    return k, (others[-1] if others else None)


def expected_layers(model: "onnx.ModelProto", provenance: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 1 for every Conv/MatMul/Gemm with a constant weight: is it 2:4 on TensorRT's axis?"""
    from sparsecc.backends.onnx.verify_nm import check_nm

    by_init = {e["initializer"]: fqn for fqn, e in provenance.items() if e.get("initializer")}
    out = []
    for e in check_nm(model, 2, 4):
        if e.initializer is None:
            continue  # both operands computed (attention scores): not a weight
        fqn = by_init.get(e.initializer, "")
        entry = e.to_dict()
        k, n = _k_n(entry)
        out.append({
            "layer": provenance[fqn]["layer"] if fqn else f"(initializer {e.initializer})",
            "fqn": fqn,
            "onnx_node": e.node,
            "op": e.op,
            "initializer": e.initializer,
            "shape": list(e.shape),
            "axis": e.axis,
            "k": k,
            "n": n,
            "sparsity": e.sparsity,
            "onnx_2_4": e.eligible,
            # A weight with no zeros was left dense on purpose; "pattern broken" would mislead.
            "reason": "dense weight: not pruned" if e.reason.startswith("pattern broken") and not e.sparsity else e.reason,
        })
    return out


def _size_note(op: str, k: int | None, n: int | None) -> str:
    if k is None:
        return ""
    dims = f"C_in={k}, C_out={n}" if op == "Conv" else f"K={k}, N={n}"
    small = min(k, n or k) < SMALL_LAYER
    return dims + (f" (below {SMALL_LAYER} channels the dense kernel usually wins)" if small else "")


def _engine_layers(info: EngineInfo | None, names: LayerNameMap) -> dict[str, list[EngineLayer]]:
    out: dict[str, list[EngineLayer]] = {}
    if info is None:
        return out
    for layer in info.layers:
        for node in names.nodes(layer.name, layer.onnx_nodes):
            out.setdefault(node, []).append(layer)
    return out


def _listed(names_in_log: list[str] | None, node: str, names: LayerNameMap,
            by_name: dict[str, EngineLayer]) -> str | None:
    """The log entry (engine layer name) that covers ``node``, if any."""
    for trt_name in names_in_log or []:
        layer = by_name.get(trt_name)
        if node in names.nodes(trt_name, layer.onnx_nodes if layer else ()):
            return trt_name
    return None


def layer_report(
    expected: Sequence[dict[str, Any]],
    names: LayerNameMap,
    log: SparsityLog | None = None,
    info: EngineInfo | None = None,
) -> list[LayerRow]:
    """One `LayerRow` per expected layer, from the build log and/or the engine info."""
    by_node = _engine_layers(info, names)
    by_name = {layer.name: layer for layer in info.layers} if info is not None else {}
    rows = []
    for e in expected:
        node, op = e["onnx_node"], e["op"]
        k, n = e.get("k"), e.get("n")
        base = dict(layer=e["layer"], fqn=e.get("fqn", ""), onnx_node=node, op=op, k=k, n=n, onnx_2_4=bool(e["onnx_2_4"]))
        engine = by_node.get(node, [])
        trt_layer = engine[0].name if engine else ""
        tactic = engine[0].tactic if engine else ""
        sparse_tactic = any(layer.sparse_tactic for layer in engine)
        if not e["onnx_2_4"]:
            rows.append(LayerRow(**base, eligible=False, picked=False, status=STATUS_NOT_2_4,
                                 reason=e["reason"], trt_layer=trt_layer, tactic=tactic))
            continue
        have_log = log is not None and log.found
        if not have_log and info is None:
            rows.append(LayerRow(**base, eligible=None, picked=None, status=STATUS_UNKNOWN,
                                 reason="no build log or engine info: build with sparsity enabled and keep the log"))
            continue
        eligible_in = _listed(log.eligible, node, names, by_name) if have_log else None
        picked_in = _listed(log.picked, node, names, by_name) if have_log and log.picked is not None else None
        if have_log:
            eligible, picked = eligible_in is not None, picked_in is not None
        else:  # engine info only: the tactic name is the evidence
            eligible, picked = None, sparse_tactic
        trt_layer = picked_in or eligible_in or trt_layer
        if picked or sparse_tactic:
            why = "2:4 sparse kernel picked" + (f": {tactic}" if tactic else "")
            if have_log and not picked:
                why += " (the tactic name says sparse, the build log does not list it)"
            rows.append(LayerRow(**base, eligible=True if eligible is None else eligible, picked=True,
                                 status=STATUS_SPARSE, reason=why, trt_layer=trt_layer, tactic=tactic))
        elif eligible:
            why = "TensorRT timed dense faster for this layer"
            note = _size_note(op, k, n)
            why += f": {note}" if note else ""
            why += f"; picked {tactic}" if tactic else ""
            rows.append(LayerRow(**base, eligible=True, picked=False, status=STATUS_DENSE, reason=why,
                                 trt_layer=trt_layer, tactic=tactic))
        else:
            rows.append(LayerRow(**base, eligible=eligible, picked=False, status=STATUS_NOT_ELIGIBLE,
                                 reason=_not_eligible_reason(engine, have_log), trt_layer=trt_layer, tactic=tactic))
    return rows


def _not_eligible_reason(engine: list[EngineLayer], have_log: bool) -> str:
    if not engine:
        if not have_log:
            return "no engine layer comes from this node and no build log says otherwise"
        return "TensorRT did not list this layer as eligible for sparse math (no engine info to say more)"
    layer = engine[0]
    if is_myelin_region(layer.name):
        return (f"fused into a Myelin region ({layer.name[:80]}): the builder did not list it as eligible "
                "for sparse math, and the region's kernels are not reported per layer")
    types = " ".join(layer.input_types + layer.output_types).lower()
    if types and "fp16" not in types and "half" not in types and "int8" not in types and "fp8" not in types:
        return f"runs in FP32 ({layer.input_types[0] if layer.input_types else '?'}): 2:4 kernels need FP16, BF16, INT8 or FP8"
    return f"TensorRT did not list layer '{layer.name}' ({layer.layer_type}) as eligible for sparse math"


def report_summary(rows: Sequence[LayerRow]) -> dict[str, Any]:
    count = lambda status: sum(r.status == status for r in rows)  # noqa: E731
    return {
        "layers": len(rows),
        "onnx_2_4": sum(r.onnx_2_4 for r in rows),
        "eligible": sum(bool(r.eligible) for r in rows),
        "sparse": count(STATUS_SPARSE),
        "dense_timed_faster": count(STATUS_DENSE),
        "not_eligible": count(STATUS_NOT_ELIGIBLE),
        "not_2_4": count(STATUS_NOT_2_4),
        "unknown": count(STATUS_UNKNOWN),
    }


def _mark(v: bool | None) -> str:
    return "?" if v is None else ("yes" if v else "no")


def report_markdown(rows: Sequence[LayerRow], title: str = "TensorRT 2:4 per layer") -> str:
    s = report_summary(rows)
    lines = [f"## {title}", "",
             f"{s['sparse']} of {s['layers']} layers run a 2:4 sparse kernel; {s['onnx_2_4']} are 2:4 in the ONNX, "
             f"{s['eligible']} eligible in TensorRT, {s['dense_timed_faster']} timed dense faster.", "",
             "| layer | ONNX node | 2:4 in ONNX | eligible | sparse picked | reason |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.layer} | {r.onnx_node} | {_mark(r.onnx_2_4)} | {_mark(r.eligible)} | "
                     f"{_mark(r.picked)} | {reason} |")
    return "\n".join(lines) + "\n"
