"""Read a ``.pte`` file back: constant tensors, named data, XNNPACK delegate graphs.

Built on ExecuTorch's own (private) deserializer, pinned by the
``executorch==1.5.1`` extra. XNNPACK delegates carry an ``XNNGraph``
flatbuffer (after a small ``XH00`` header); it is decoded to JSON with the
``flatc`` binary and schema shipped with ExecuTorch. Constant weights of
XNNPACK nodes are not in the delegate blob but in the program's named data
segments, keyed by the SHA-256 of their bytes.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import _deps

__all__ = ["PteReader", "ConstantTensor", "decode_xnnpack_graph", "XNN_DTYPES", "SCALAR_TYPES", "INDEX_TYPES"]

XNN_DTYPES = {
    "xnn_datatype_fp32": torch.float32,
    "xnn_datatype_fp16": torch.float16,
    "xnn_datatype_bf16": torch.bfloat16,
    # int8 integers of a quantized weight: per channel (qc8w) or per tensor.
    "xnn_datatype_qcint8": torch.int8,
    "xnn_datatype_qint8": torch.int8,
}
# executorch ScalarType codes for the floating dtypes a weight can have.
SCALAR_TYPES = {5: torch.float16, 6: torch.float32, 7: torch.float64, 15: torch.bfloat16}
# ... and for the indices of a compressed weight (sparsecc's custom ops).
INDEX_TYPES = {3: torch.int32}


@dataclass(frozen=True)
class ConstantTensor:
    """A constant tensor of the program (not delegated): where it lives and its shape."""

    value_index: int
    buffer_index: int
    sizes: tuple[int, ...]
    dtype: torch.dtype


def _as_bytes(buf: Any) -> bytes:
    return buf if isinstance(buf, bytes) else bytes(buf)


def decode_xnnpack_graph(blob: bytes) -> dict[str, Any]:
    """Decode an XNNPACK delegate payload into its ``XNNGraph`` as a dict."""
    ser = _deps.xnnpack_serialization()
    header = ser.XNNHeader.from_bytes(blob[: ser.XNNHeader.EXPECTED_LENGTH])
    payload = blob[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    schema_pkg = ser.__name__.rsplit(".", 1)[0]
    schema = importlib.resources.files(schema_pkg).joinpath("schema.fbs").read_bytes()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "schema.fbs").write_bytes(schema)
        (Path(d) / "graph.bin").write_bytes(payload)
        _deps.flatbuffer()._flatc_decompile(d, str(Path(d) / "schema.fbs"), str(Path(d) / "graph.bin"))
        text = (Path(d) / "graph.json").read_text()
    # flatc writes the unbounded output clamps as bare inf, which JSON lacks.
    text = re.sub(r"(:\s*)(-?)inf\b", r"\1\2Infinity", text)
    text = re.sub(r"(:\s*)nan\b", r"\1NaN", text)
    return json.loads(text)


class PteReader:
    """A deserialized ``.pte``: its program, named data and delegate payloads."""

    def __init__(self, data: bytes):
        pte = _deps.serialize().deserialize_pte_binary(data)
        self.program = pte.program
        self._named = pte.named_data
        self._graphs: dict[int, dict[str, Any]] = {}

    @classmethod
    def open(cls, path: str | Path) -> "PteReader":
        return cls(Path(path).read_bytes())

    # -- program ---------------------------------------------------------------
    @property
    def plan(self) -> Any:
        return self.program.execution_plan[0]

    def operators(self) -> list[str]:
        """The kernels the program calls outside delegates, as ``name.overload``."""
        return [f"{op.name}.{op.overload}" if op.overload else op.name for op in self.plan.operators]

    def constant_tensors(self) -> list[ConstantTensor]:
        """Tensors of the plan backed by the program's constant buffer."""
        out = []
        for i, ev in enumerate(self.plan.values):
            t = ev.val
            if type(t).__name__ == "Tensor" and getattr(t, "data_buffer_idx", 0) > 0:
                dtype = SCALAR_TYPES.get(int(t.scalar_type)) or INDEX_TYPES.get(int(t.scalar_type))
                if dtype is not None:
                    out.append(ConstantTensor(i, t.data_buffer_idx, tuple(t.sizes), dtype))
        return out

    def constant(self, c: ConstantTensor) -> torch.Tensor:
        storage = self.program.constant_buffer[c.buffer_index].storage
        numel = 1
        for s in c.sizes:
            numel *= s
        nbytes = numel * torch.empty((), dtype=c.dtype).element_size()
        # Buffers are stored padded to their alignment: keep the tensor's bytes only.
        raw = bytearray(_as_bytes(storage)[:nbytes])
        return torch.frombuffer(raw, dtype=c.dtype).reshape(c.sizes) if numel else torch.empty(c.sizes, dtype=c.dtype)

    # -- named data ------------------------------------------------------------
    def named_keys(self) -> list[str]:
        return list(self._named.pte_data) if self._named is not None else []

    def named_data(self, key: str) -> bytes:
        if self._named is None or key not in self._named.pte_data:
            raise KeyError(f"the .pte has no named data {key!r}")
        return _as_bytes(self._named.buffers[self._named.pte_data[key].buffer_index])

    # -- delegates -------------------------------------------------------------
    def delegates(self) -> list[tuple[str, bytes]]:
        """``(backend id, payload)`` for each delegate call of the plan, in order."""
        out = []
        for d in self.plan.delegates:
            # deserialize_pte_binary has moved every payload inline.
            out.append((d.id, _as_bytes(self.program.backend_delegate_data[d.processed.index].data)))
        return out

    def xnnpack_graph(self, index: int) -> dict[str, Any]:
        if index not in self._graphs:
            backend_id, blob = self.delegates()[index]
            if backend_id != "XnnpackBackend":
                raise ValueError(f"delegate {index} is {backend_id}, not XnnpackBackend")
            self._graphs[index] = decode_xnnpack_graph(blob)
        return self._graphs[index]

    def xnnpack_tensor(self, index: int, value_id: int) -> tuple[torch.Tensor, str]:
        """Value ``value_id`` of XNNPACK delegate ``index``, read from the named data; and its key."""
        graph = self.xnnpack_graph(index)
        value = graph["xvalues"][value_id]["xvalue_union"]
        value = value.get("tensor_value", value)  # an XNNQuantizedTensorValue wraps the tensor
        buffer_idx = int(value.get("constant_buffer_idx", 0))
        if buffer_idx <= 0:
            raise ValueError(f"XNNPACK value {value_id} of delegate {index} holds no constant data")
        key = graph["constant_data"][buffer_idx]["named_key"]
        dtype = XNN_DTYPES.get(value["datatype"])
        if dtype is None:
            raise ValueError(f"XNNPACK value {value_id} has datatype {value['datatype']}, not a float")
        dims = tuple(int(d) for d in value["dims"])
        raw = bytearray(self.named_data(key))
        return torch.frombuffer(raw, dtype=dtype).reshape(dims), key

    def xnnpack_quant_params(self, index: int, value_id: int) -> dict[str, Any] | None:
        """The quantization of value ``value_id`` of XNNPACK delegate ``index`` (None for a float value).

        ``{"type": "PerChannelQuant", "channel_dim", "scale": float32 tensor}`` for
        per-channel int8 weights, the scales read from the named data; other
        types come back as XNNPACK serialized them (``{"type", **params}``).
        """
        union = self.xnnpack_graph(index)["xvalues"][value_id]
        value = union["xvalue_union"]
        if "quant_params_type" not in value:
            return None
        kind, params = value["quant_params_type"], dict(value.get("quant_params") or {})
        out: dict[str, Any] = {"type": kind, "datatype": value["tensor_value"]["datatype"]}
        if kind == "PerChannelQuant":
            scale = torch.tensor(params.get("scale") or [], dtype=torch.float32)
            buf = int(params.get("scale_buffer_idx", 0) or 0)
            if buf > 0:
                key = self.xnnpack_graph(index)["constant_data"][buf]["named_key"]
                scale = torch.frombuffer(bytearray(self.named_data(key)), dtype=torch.float32).clone()
            out.update(channel_dim=int(params.get("channel_dim", 0)), scale=scale)
        else:
            out.update(params)
        return out
