"""Build a TensorRT engine from an ONNX file with TensorRT's Python API (needs a CUDA GPU).

One build = one `EngineBuild`: the serialized engine, the builder's log (for
the sparsity lines), and the inspector's per-layer JSON. The calls follow
TensorRT's Python API for versions 10 and 11:

- ``trt.Builder(logger)``, ``builder.create_network(0)`` (explicit batch is
  the only mode since 10; 11 is always strongly typed) and
  ``trt.OnnxParser(network, logger).parse_from_file(path)``;
- ``config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)`` for 2:4 kernels, and on
  TensorRT 10 only ``config.set_flag(trt.BuilderFlag.FP16)`` (11 removed
  every precision flag and builds the types of the FP16 graph);
- ``config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED`` so the
  inspector reports tactics and ONNX origins per layer;
- a timing cache: ``config.create_timing_cache(bytes)``,
  ``config.set_timing_cache(cache, False)`` (``ignore_mismatch``), saved back with
  ``config.get_timing_cache().serialize()``;
- one optimisation profile: ``builder.create_optimization_profile()``,
  ``profile.set_shape(name, min, opt, max)``, ``config.add_optimization_profile``;
- ``builder.build_serialized_network(network, config)``, then
  ``trt.Runtime(logger).deserialize_cuda_engine(plan)`` and
  ``engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecc.backends.base import LoweringError

from . import _deps
from .build_log import SparsityLog, parse_build_log
from .inspector import EngineInfo, parse_engine_info
from .trtexec import Profile
from .version import tensorrt_major

__all__ = ["EngineBuild", "build_engine", "capturing_logger"]


@dataclass
class EngineBuild:
    plan: bytes
    log: list[str]
    layer_info_json: str
    major: int
    version: str
    seconds: float
    sparsity: SparsityLog = field(init=False)
    info: EngineInfo = field(init=False)

    def __post_init__(self) -> None:
        self.sparsity = parse_build_log(self.log)
        self.info = parse_engine_info(self.layer_info_json)


def capturing_logger(trt: Any, lines: list[str]) -> Any:
    """A ``trt.ILogger`` that keeps every message from INFO up (the sparsity lines are INFO)."""
    names = {trt.Logger.INTERNAL_ERROR: "F", trt.Logger.ERROR: "E", trt.Logger.WARNING: "W",
             trt.Logger.INFO: "I", trt.Logger.VERBOSE: "V"}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity != trt.Logger.VERBOSE:
                lines.append(f"[{names.get(severity, '?')}] [TRT] {msg}")

    return _Logger()


def build_engine(onnx_path: Path, profile: Profile, *, sparse: bool = True,
                 timing_cache: Path | None = None, workspace_bytes: int | None = None) -> EngineBuild:
    """Build one engine from ``onnx_path`` (an FP16 graph; see `version.needs_fp16_graph`)."""
    trt = _deps.tensorrt()
    major = tensorrt_major(trt)
    lines: list[str] = []
    logger = capturing_logger(trt, lines)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LoweringError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if major == 10:
        config.set_flag(trt.BuilderFlag.FP16)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # ignore_mismatch=False

    if any(lo != hi for lo, _, hi in profile.values()):
        opt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        errors = [line for line in lines if line.startswith("[E]")]
        raise LoweringError(f"TensorRT failed to build {onnx_path}: {'; '.join(errors[-3:]) or 'no error logged'}")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineBuild(bytes(memoryview(plan)), lines, info, major, trt.__version__, seconds)
