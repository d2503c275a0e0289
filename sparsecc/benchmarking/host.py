"""The machine a run happened on, without importing torch unless it is already loaded."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from sparsecc.core.machine import cpu_info, library_versions

__all__ = ["host_info", "load_average"]


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine inflates times."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def host_info() -> dict[str, Any]:
    """`sparsecc.machine.machine_info`'s fields; torch's thread count only when torch is loaded.

    Importing torch just to report its thread count would cost the ONNX
    Runtime path seconds and hundreds of MB of resident memory.
    """
    model, flags = cpu_info()
    load = load_average()
    torch = sys.modules.get("torch")
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_avg_1m": load[0] if load else None,
        "load_avg": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": library_versions(),
    }
