"""What machine and library versions a measurement or an artifact came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

__all__ = ["machine_info", "cpu_info", "library_versions"]

_LIBS = ("sparsecc", "torch", "onnx", "onnxruntime", "onnxscript", "executorch", "transformers", "numpy")


def library_versions(names: tuple[str, ...] = _LIBS) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and the SIMD flags that decide which kernels run (no torch needed)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "fma", "neon", "asimd", "sve")
    return model, [f for f in wanted if f in flags]


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, load, OS and library versions."""
    import torch

    model, flags = cpu_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(load[0], 2) if load else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": library_versions(),
    }
