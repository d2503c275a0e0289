"""Run a lowered ONNX model with ONNX Runtime's CPU provider.

Sessions use ``intra_op_num_threads`` threads, one inter-op thread, and no
spin-waiting (``session.intra_op.allow_spinning = 0``): two spinning sessions
in one process steal each other's cores and skew every timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sparsecc.backends.base import Runner, TensorSpec, check_inputs
from sparsecc.core.ort_session import feed_order, open_session, session_options

from . import _deps

__all__ = ["OrtRunner", "session_options"]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        raise TypeError("bfloat16 inputs have no numpy type; cast them to float32 before export")
    return t.contiguous().numpy()


class OrtRunner(Runner):
    """An ONNX Runtime CPU session that takes and returns flat torch tensors.

    ``custom_ops_library``: ``libsparsecc_ort.so``, registered for models with ``sparsecc.SparseMatMul`` nodes.
    """

    def __init__(self, model_path: Path, inputs: Sequence[TensorSpec], threads: int | None = None,
                 custom_ops_library: Path | None = None):
        _deps.onnxruntime()
        self.inputs = list(inputs)
        # open_session names libsparsecc_ort.so when the model uses sparsecc's ops without it
        self.session = open_session(model_path, session_options(threads), custom_ops_library)
        # Session inputs matched to the program's by name, else position (the exporter
        # renames some, `input_1` -> `input`, and drops those the graph does not read).
        args = self.session.get_inputs()
        order = feed_order([(s.name, s.dtype, len(s.shape)) for s in self.inputs], args)
        self._feed = [(a.name, i) for a, i in zip(args, order)]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_inputs(self.inputs, inputs)
        feed = {name: _to_numpy(inputs[i]) for name, i in self._feed}
        outs = self.session.run(self.output_names, feed)
        return [torch.from_numpy(np.asarray(o)) for o in outs]
