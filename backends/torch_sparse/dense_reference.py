"""Dense references a layer's sparse kernel must beat: ONNX Runtime and int8 dense products.

Torch's dense product is about 1.3x slower than ONNX Runtime's on this kind of
CPU, so a sparse kernel that only beats torch may lose against the runtime a
user deploys. These callables run one layer, at its activation shape, the way
each dense runtime would, for `select_kernels` to time beside the sparse
kernels:

- `ort_linear`: the layer as a one-node ONNX model (``Gemm``, weight
  ``[out, in]`` transposed) in an ONNX Runtime session, fp32; with
  ``int8=True`` the same model after ``onnxruntime.quantization.quantize_dynamic``
  (what a user gets from one call);
- `torch_dynamic_int8`: torch's dynamic int8 linear (fbgemm / onednn,
  ``torch.ops.quantized.linear_dynamic``) on the layer's weight.

Each returns None when its runtime is missing or rejects the layer, so
kernel choice falls back to what is available.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Callable

import numpy as np
import torch

from sparsecc.core.ort_session import session_options

__all__ = ["ort_linear", "torch_dynamic_int8"]


def _gemm_model(w: np.ndarray, bias: np.ndarray | None) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    inputs = ["X", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("Gemm", inputs, ["Y"], transB=1)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_linear(w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, *, int8: bool = False,
               threads: int | None = None) -> Callable[[], Any] | None:
    """A callable running ``x @ w.T + bias`` in ONNX Runtime (int8: after ``quantize_dynamic``), or None."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    model = _gemm_model(w.detach().float().numpy(), None if bias is None else bias.detach().float().numpy())
    x2 = np.ascontiguousarray(x.detach().reshape(-1, w.shape[1]).float().numpy())
    threads = threads if threads is not None else torch.get_num_threads()
    try:
        if not int8:
            sess = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                        providers=["CPUExecutionProvider"])
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with tempfile.TemporaryDirectory() as tmp:
                src, dst = os.path.join(tmp, "layer.onnx"), os.path.join(tmp, "layer.int8.onnx")
                onnx.save(model, src)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
                sess = ort.InferenceSession(dst, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # an ORT build without the op, a quantizer failure: no reference from ORT
        warnings.warn(f"ONNX Runtime {'int8 ' if int8 else ''}dense reference unavailable for a "
                      f"{list(w.shape)} layer: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        return None
    feed = {"X": x2}
    return lambda: sess.run(None, feed)


def torch_dynamic_int8(w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> Callable[[], Any] | None:
    """A callable running torch's dynamic int8 linear (per-channel int8 weight) on ``x``, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch calls its quantized tensor types deprecated
            scale = w.detach().abs().amax(1).clamp_min(1e-12) / 127
            qw = torch.quantize_per_channel(w.detach().float(), scale.double(), torch.zeros(w.shape[0],
                                            dtype=torch.int64), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
            op = torch.ops.quantized.linear_dynamic
            op(x, packed, False)
    except Exception:  # no quantized engine in this build
        return None
    return lambda: op(x, packed, False)
