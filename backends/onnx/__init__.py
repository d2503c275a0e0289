"""ONNX backend: lowering with the torch.onnx dynamo exporter, ONNX Runtime
execution, weight provenance, and TensorRT 2:4 eligibility checks; the
``onnx-custom-ops`` target runs sparse layers with sparsecc's ONNX Runtime
custom op where that measured faster.

Importing this package registers the backend as ``"onnx"``; onnx,
onnxruntime, onnxscript and onnx-graphsurgeon are imported only when used.
"""

from sparsecc.backends.base import register_backend

from .backend import OnnxBackend, OnnxCustomOpsBackend
from .verify_nm import LayerEligibility, check_nm

__all__ = ["OnnxBackend", "OnnxCustomOpsBackend", "LayerEligibility", "check_nm"]

register_backend("onnx", OnnxBackend)
register_backend("onnx-custom-ops", OnnxCustomOpsBackend)
