"""Other libraries' output that a user cannot act on, hidden unless ``-v``.

Python-level noise (warnings, loggers, tqdm bars) is switched off at its
source. The ExecuTorch runtime prints its cpuinfo probing from C++ straight
to file descriptor 2; `filtered_stderr` runs fd 2 through a pipe and drops
those lines only, passing everything else through in order.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

__all__ = ["quiet_third_party", "filtered_stderr", "NOISE_LINE"]

_NOISY = ("torch", "torchao", "executorch", "onnxscript", "onnx", "transformers", "huggingface_hub", "urllib3")
# C++ log lines of ExecuTorch's cpuinfo probing and thread pool set-up, e.g. "[cpuinfo_utils.cpp:71] Reading file".
NOISE_LINE = re.compile(rb"^\[(cpuinfo_utils|cpuinfo|threadpool)\.c(pp)?:\d+\]|^Error in cpuinfo:")


def quiet_third_party(verbose: bool) -> None:
    """Warnings, loggers and progress bars of torch, torchao, ExecuTorch, ONNX and HF: errors only."""
    level = logging.WARNING if verbose else logging.ERROR
    for name in _NOISY:
        logging.getLogger(name).setLevel(level)
    if verbose:
        return
    for var, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error"), ("TORCH_CPP_LOG_LEVEL", "ERROR"),
                       ("TORCH_LOGS", "-all")):
        os.environ.setdefault(var, value)
    if "torch" in sys.modules:  # imported already: TORCH_LOGS was read, set its loggers directly
        import torch._logging

        torch._logging.set_logs(all=logging.ERROR)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(%s)(\.|$)" % "|".join(_NOISY))


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """Drop `NOISE_LINE` lines written to fd 2 (by C++ too) while the block runs; a no-op without a real fd 2."""
    try:
        fd = sys.stderr.fileno() if enabled else -1
    except (AttributeError, OSError, ValueError):  # captured by a test runner: nothing to filter
        fd = -1
    if fd != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as src:
            pending = b""
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not NOISE_LINE.match(line))
                if kept:
                    os.write(saved, kept)
            if pending and not NOISE_LINE.match(pending):
                os.write(saved, pending)

    thread = threading.Thread(target=pump, name="sparsecc-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=5)
        os.close(saved)
