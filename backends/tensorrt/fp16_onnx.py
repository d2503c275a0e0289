"""Lower a program to an FP16 ONNX file, with provenance and the 2:4 check redone after conversion.

Shared by the TensorRT backend (which builds engines from the file) and the
edge bundle (which ships it). The ONNX backend exports and cleans the fp32
graph and records where each weight went; `to_fp16` rewrites the types
keeping every initializer's name, so that provenance still holds; the N:M
check then runs again on the FP16 weights TensorRT will read.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from sparsecc.backends.base import LowerOptions, LoweringError, TensorSpec

from . import _deps
from .fp16 import Fp16Conversion, to_fp16
from .report import expected_layers

__all__ = ["Fp16Onnx", "lower_fp16_onnx", "dim_ranges", "FP16_MODEL_FILE"]

FP16_MODEL_FILE = "model.fp16.onnx"
# protobuf refuses messages of 2 GiB; keep headroom for the graph itself.
_EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


@dataclass
class Fp16Onnx:
    files: dict[str, str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provenance: dict[str, dict[str, Any]]
    conversion: Fp16Conversion
    expected: list[dict[str, Any]]
    node_order: list[str]
    onnx_meta: dict[str, Any]


def dim_ranges(program: ExportedProgram, names: dict[str, str]) -> dict[str, tuple[int, int | None]]:
    """Dynamic dim name -> (lower, upper or None), from the program's range constraints."""
    out: dict[str, tuple[int, int | None]] = {}
    for sym, vr in program.range_constraints.items():
        name = names.get(str(sym))
        if name is None:
            continue
        upper = None if not vr.upper.is_finite else int(vr.upper)
        out[name] = (int(vr.lower), upper)
    return out


def lower_fp16_onnx(program: ExportedProgram, out_dir: Path, options: LowerOptions, io: str = "float32") -> Fp16Onnx:
    """Write ``out_dir/model.fp16.onnx`` and describe it; raises `LoweringError` when 2:4 breaks."""
    from sparsecc.backends.onnx import OnnxBackend
    from sparsecc.backends.onnx.backend import _onnx_specs

    onnx = _deps.onnx()
    with tempfile.TemporaryDirectory(prefix="sparsecc-fp32-onnx-") as tmp:
        fp32 = OnnxBackend().lower(program, Path(tmp), LowerOptions(
            opset=options.opset, threads=options.threads, sparse_initializers=False,
            extra={k: v for k, v in options.extra.items() if k in ("dynamic_axes", "custom_translation_table")}))
        model = onnx.load(str(fp32.path("model")))  # external data, if any, is read from tmp now
    meta = fp32.meta
    try:
        conversion = to_fp16(model, io)
    except (NotImplementedError, ValueError) as e:
        raise LoweringError(f"FP16 conversion failed: {e}") from e
    before = {e["initializer"]: e["eligible"] for e in meta["tensorrt_2_4"] if e.get("initializer")}
    expected = expected_layers(model, meta["provenance"])
    lost = [e for e in expected if before.get(e["initializer"]) and not e["onnx_2_4"]]
    if lost:
        first = lost[0]
        raise LoweringError(f"FP16 conversion broke 2:4 on {len(lost)} layers, first {first['layer']} "
                            f"(ONNX node {first['onnx_node']}): {first['reason']}")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FP16_MODEL_FILE
    files = {"model": FP16_MODEL_FILE}
    try:
        if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model)
            onnx.save_model(model, str(path))
        else:
            data = FP16_MODEL_FILE + ".data"
            (out_dir / data).unlink(missing_ok=True)
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
            onnx.checker.check_model(str(path))
            files["weights"] = data
    except onnx.checker.ValidationError as e:
        raise LoweringError(f"the FP16 ONNX model is invalid: {e}") from e

    inputs = []
    graph_inputs = {s.name: s for s in _onnx_specs(model.graph.input)}
    for spec in fp32.inputs:  # keep the program's dim names; the dtype is what the FP16 graph takes
        g = graph_inputs.get(spec.name)
        inputs.append(TensorSpec(spec.name, spec.shape, g.dtype if g is not None else spec.dtype))
    onnx_meta = {k: meta.get(k) for k in ("opset", "ir_version", "exporter", "dynamic_axes", "cleanup")}
    onnx_meta["torch"] = torch.__version__
    return Fp16Onnx(files, inputs, _onnx_specs(model.graph.output), meta["provenance"], conversion, expected,
                    [n.name for n in model.graph.node], onnx_meta)
