"""Per-operator times of a ``.pte`` from ExecuTorch's ETDump, for the dense and the sparse model.

The runtime records one event per XNNPACK operator when a program is loaded
with ``enable_etdump=True`` ("Convolution (NHWC, F32) IGEMM #3", "Fully
Connected (NC, F32) GEMM #12"). Those names are XNNPACK's, numbered per
operator type inside each delegate; nothing in them names the model's layer
(that link needs an ETRecord written at lowering, which bundles do not hold
yet), and XNNPACK turns some 1x1 convolutions into fully-connected
operators, so counting cannot recover it either. The profile is therefore
per operator, not per layer. Dense and sparse lower to the same operator
list, so each operator is paired by name.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np

from sparsecc.bundle.reader import Variant

__all__ = ["profile_executorch"]

_WARMUP = 3


def _events(path: str, skip: int) -> tuple[dict[str, list[float]], float | None]:
    from executorch.devtools import Inspector

    ops: dict[str, list[float]] = {}
    for block in Inspector(etdump_path=path).event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            if ev.perf_data is None or not ev.is_delegated_op:
                continue
            ops[ev.name] = [float(x) for x in ev.perf_data.raw][skip:]  # ms per run
    return ops, None


def profile_executorch(variants: dict[str, Variant], inputs: Sequence[np.ndarray],
                       iterations: int = 20) -> dict[str, Any]:
    """``{variant: {"e2e_ms": [...], "operators": {name: [ms per run]}}}``, variants run interleaved."""
    import time

    import torch
    from executorch.extension.pybindings import portable_lib

    args = [torch.from_numpy(a) for a in inputs]
    for v in variants.values():  # a .pte that calls sparsecc's kernels: register them first
        library = v.files().get("custom_ops_library")
        if library is not None:
            from sparsecc.kernels.et_library import load_et_library

            load_et_library(library)
    modules = {name: portable_lib._load_for_executorch(str(v.path), enable_etdump=True)
               for name, v in variants.items()}
    names = list(modules)
    e2e: dict[str, list[float]] = {n: [] for n in names}
    for i in range(_WARMUP + iterations):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            modules[n].forward(args)
            if i >= _WARMUP:
                e2e[n].append((time.perf_counter() - t0) * 1e3)
    out = {}
    with tempfile.TemporaryDirectory(prefix="sparsecc-etdump-") as tmp:
        for n, m in modules.items():
            path = os.path.join(tmp, f"{n}.etdp")
            m.write_etdump_result_to_file(path)
            ops, _ = _events(path, _WARMUP)
            out[n] = {"e2e_ms": e2e[n], "operators": ops}
    return out
