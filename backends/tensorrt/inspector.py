"""The engine inspector's per-layer JSON: layer names, ONNX origins, chosen tactics.

Built with detailed profiling verbosity (``ProfilingVerbosity.DETAILED``,
``trtexec --profilingVerbosity=detailed``), an engine describes each of its
layers through ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)``
(``trtexec --exportLayerInfo=FILE`` writes the same JSON)::

    {"Layers": [{"Name": "node_MatMul_58", "LayerType": "CaskGemm",
                 "Inputs": [...], "Outputs": [...],
                 "Metadata": "[ONNX Layer: node_MatMul_58]",
                 "TacticName": "sm90_xmma_gemm_..._sparse_...", "TacticValue": "0x..."}, ...],
     "Bindings": ["input_ids", ...]}                 # TensorRT 10
     "I/O Tensors": [{"Name": ..., "IOMode": "Input", ...}]   # TensorRT 11

``Metadata`` lists the ONNX nodes a layer was built from, separated by the
ASCII unit/record separators (\\x1f, \\x1e). Tensor types are one field
``Format/Datatype`` in TensorRT 10 and two (``Format``, ``DataType``) in 11.
A layer whose tactic name contains ``sparse`` runs a 2:4 sparse kernel.
An engine built with several optimisation profiles repeats its layers with a
``[profile N]`` suffix; only profile 0 (no suffix) is read unless asked.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from sparsecc.errors import SparseccError

__all__ = ["EngineLayer", "EngineInfo", "parse_engine_info", "load_engine_info", "onnx_nodes_in_metadata",
           "InspectorFormatError"]

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_PROFILE = re.compile(r"\s*\[profile (\d+)\]")


class InspectorFormatError(SparseccError, ValueError):
    pass


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    tactic: str
    onnx_nodes: tuple[str, ...]
    input_types: tuple[str, ...] = ()
    output_types: tuple[str, ...] = ()

    @property
    def sparse_tactic(self) -> bool:
        return "sparse" in self.tactic.lower()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sparse_tactic"] = self.sparse_tactic
        return d


@dataclass
class EngineInfo:
    layers: list[EngineLayer]
    io_tensors: list[str] = field(default_factory=list)
    schema: str = ""  # "tensorrt10" (Bindings) or "tensorrt11" (I/O Tensors)

    def by_onnx_node(self) -> dict[str, list[EngineLayer]]:
        out: dict[str, list[EngineLayer]] = {}
        for layer in self.layers:
            for node in layer.onnx_nodes:
                out.setdefault(node, []).append(layer)
        return out


def onnx_nodes_in_metadata(metadata: str) -> tuple[str, ...]:
    """``"[ONNX Layer: a]\\x1f[ONNX Layer: b]"`` -> ``("a", "b")``."""
    return tuple(dict.fromkeys(m.strip() for m in _ONNX_LAYER.findall(metadata or "")))


def _tensor_types(tensors: Any) -> tuple[str, ...]:
    out = []
    for t in tensors or []:
        if not isinstance(t, dict):
            continue
        if "Format/Datatype" in t:  # TensorRT 10: "Row major linear FP16 format"
            out.append(str(t["Format/Datatype"]))
        elif "DataType" in t:  # TensorRT 11
            out.append(str(t["DataType"]))
    return tuple(out)


def parse_engine_info(data: str | dict, profile: int = 0) -> EngineInfo:
    """Parse the inspector JSON (text or decoded) of one engine; layers of optimisation profile ``profile``."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise InspectorFormatError(f"engine layer information is not JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("Layers"), list):
        raise InspectorFormatError("engine layer information has no 'Layers' list")
    raw = data["Layers"]
    if raw and not isinstance(raw[0], dict):
        raise InspectorFormatError(
            "engine layer information holds layer names only: build the engine with detailed profiling "
            "verbosity (ProfilingVerbosity.DETAILED, trtexec --profilingVerbosity=detailed)")
    layers = []
    for entry in raw:
        name = str(entry.get("Name", ""))
        m = _PROFILE.search(name)
        if (int(m.group(1)) if m else 0) != profile:
            continue
        name = _PROFILE.sub("", name)
        if entry.get("LayerType") in ("signal", "wait"):  # stream synchronisation, not compute
            continue
        layers.append(EngineLayer(
            name=name,
            layer_type=str(entry.get("LayerType", "")),
            tactic=str(entry.get("TacticName") or entry.get("Tactic") or ""),
            onnx_nodes=onnx_nodes_in_metadata(str(entry.get("Metadata", ""))),
            input_types=_tensor_types(entry.get("Inputs")),
            output_types=_tensor_types(entry.get("Outputs")),
        ))
    if "I/O Tensors" in data:
        io = [str(t.get("Name")) for t in data["I/O Tensors"] if isinstance(t, dict)]
        schema = "tensorrt11"
    else:
        io = [str(b) for b in data.get("Bindings", [])]
        schema = "tensorrt10"
    return EngineInfo(layers, io, schema)


def load_engine_info(path: str | Path, profile: int = 0) -> EngineInfo:
    path = Path(path)
    try:
        return parse_engine_info(path.read_text(), profile)
    except InspectorFormatError as e:
        raise InspectorFormatError(f"{path}: {e}") from e
