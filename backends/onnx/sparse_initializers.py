"""Store mostly-zero initializers as `SparseTensorProto` where the file shrinks.

ONNX sparse tensors are COO: the nonzero values plus int64 indices. With
linear (1-D) indices a nonzero costs ``itemsize + 8`` bytes against
``itemsize`` per entry dense, so fp32 pays above ~67% zeros and fp16 above
80%. Each initializer is converted only when its sparse form is smaller.
ONNX Runtime densifies sparse initializers at load: this saves file size and
download time, never inference time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _deps

if TYPE_CHECKING:
    import onnx

__all__ = ["SparseConversion", "to_sparse_initializers", "sparse_nbytes"]

_INDEX_BYTES = 8  # the ONNX spec requires int64 indices
_FLOAT_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")


@dataclass
class SparseConversion:
    """What `to_sparse_initializers` converted, and the bytes before and after."""

    converted: list[str] = field(default_factory=list)
    dense_bytes: int = 0
    sparse_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"converted": list(self.converted), "dense_bytes": self.dense_bytes, "sparse_bytes": self.sparse_bytes}


def sparse_nbytes(nnz: int, itemsize: int) -> int:
    """Payload bytes of a COO tensor with linear int64 indices."""
    return nnz * (itemsize + _INDEX_BYTES)


def to_sparse_initializers(model: "onnx.ModelProto", min_bytes: int = 1024) -> SparseConversion:
    """Convert, in place, each float initializer whose sparse form is smaller.

    Initializers under ``min_bytes`` stay dense: the saving could not pay for
    the per-tensor overhead. Graph inputs that shadow an initializer (old
    ``keep_initializers_as_inputs`` models) are left alone.
    """
    onnx = _deps.onnx()
    nh, helper = onnx.numpy_helper, onnx.helper
    graph = model.graph
    shadowed = {v.name for v in graph.input}
    report = SparseConversion()
    moved: list[int] = []
    for i, init in enumerate(graph.initializer):
        dtype = onnx.TensorProto.DataType.Name(init.data_type)
        if dtype not in _FLOAT_TYPES or init.name in shadowed or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = nh.to_array(init)
        dense = values.size * values.dtype.itemsize
        flat = values.reshape(-1)
        nz = np.flatnonzero(flat)
        if dense < min_bytes or sparse_nbytes(nz.size, values.dtype.itemsize) >= dense:
            continue
        vals = nh.from_array(flat[nz], name=init.name)
        idx = nh.from_array(nz.astype(np.int64), name=f"{init.name}_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, list(init.dims)))
        moved.append(i)
        report.converted.append(init.name)
        report.dense_bytes += dense
        report.sparse_bytes += sparse_nbytes(nz.size, values.dtype.itemsize)
    for i in reversed(moved):
        del graph.initializer[i]
    return report
