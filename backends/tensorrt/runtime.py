"""Run a TensorRT engine on CUDA tensors (TensorRT 10/11 name-based I/O API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from sparsecc.backends.base import Runner, TensorSpec, check_inputs

from . import _deps

__all__ = ["TensorRTRunner"]


class TensorRTRunner(Runner):
    """Deserialize an engine once; each call sets input shapes, binds addresses and enqueues.

    Uses ``context.set_input_shape``, ``context.set_tensor_address`` and
    ``context.execute_async_v3(stream)`` (the only execution API in 10 and 11).
    Inputs may be CPU tensors; they are copied to the GPU, outputs come back to the CPU.
    """

    def __init__(self, plan: Path, inputs: Sequence[TensorSpec]):
        trt = _deps.tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("running a TensorRT engine needs a CUDA GPU; torch.cuda.is_available() is False")
        self.trt = trt
        self.inputs = list(inputs)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> torch.dtype:
        import numpy as np

        return torch.from_numpy(np.zeros(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_inputs(self.inputs, inputs)
        feed: dict[str, Any] = {}
        for spec, t in zip(self.inputs, inputs):
            if spec.name in self.input_names:
                feed[spec.name] = t.to("cuda", self._torch_dtype(spec.name)).contiguous()
        for name, t in feed.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")
        stream.synchronize()
        return [o.cpu() for o in outs]
