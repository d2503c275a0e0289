"""TensorRT: FP16 ONNX with 2:4 re-verified, engine builds with sparse weights, and the per-layer
report of which layers ran 2:4 sparse (pattern in the ONNX -> eligible -> sparse kernel picked).

Importing this package registers two backends:

- ``"tensorrt-bundle"``: an edge bundle (FP16 ONNX, ``build.sh`` for
  trtexec 10 and 11, golden data, expected sparse layers); needs only onnx;
- ``"tensorrt"``: builds sparse and dense engines here with TensorRT's Python
  API and runs them (needs ``tensorrt`` and a CUDA GPU).
"""

from sparsecc.backends.base import register_backend

from .backend import TensorRTBackend
from .build_log import SparsityLog, parse_build_log
from .bundle import TensorRTBundleBackend
from .fp16 import Fp16Conversion, to_fp16
from .inspector import EngineInfo, EngineLayer, load_engine_info, parse_engine_info
from .layer_map import LayerNameMap, nodes_in_layer_name
from .report import LayerRow, expected_layers, layer_report, report_markdown, report_summary
from .version import tensorrt_major

__all__ = [
    "TensorRTBackend",
    "TensorRTBundleBackend",
    "SparsityLog",
    "parse_build_log",
    "Fp16Conversion",
    "to_fp16",
    "EngineInfo",
    "EngineLayer",
    "load_engine_info",
    "parse_engine_info",
    "LayerNameMap",
    "nodes_in_layer_name",
    "LayerRow",
    "expected_layers",
    "layer_report",
    "report_markdown",
    "report_summary",
    "tensorrt_major",
]

register_backend("tensorrt-bundle", TensorRTBundleBackend)
register_backend("tensorrt", TensorRTBackend)
