"""Run one `run_backend` measurement in a fresh process: ``python -m sparsecc.benchmarking.worker ARGS_JSON``.

Each (bundle, backend, threads) gets its own process so that its peak
resident memory is its own, ExecuTorch's thread pool is sized once, and an
ONNX Runtime measurement never has torch loaded. Progress goes to stderr as
``@@progress DONE TOTAL`` lines; the run record is printed to stdout as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any, Callable

__all__ = ["run_in_subprocess", "PROGRESS_TAG"]

PROGRESS_TAG = "@@progress"
_RESULT_TAG = "@@result "


def _main(argv: list[str]) -> int:
    from .backend_run import run_backend

    kwargs = json.loads(argv[0])

    def progress(done: float, total: float) -> None:
        print(f"{PROGRESS_TAG} {done} {total}", file=sys.stderr, flush=True)

    rec = run_backend(progress=progress, **kwargs)
    sys.stdout.write(_RESULT_TAG + json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 0


def run_in_subprocess(kwargs: dict[str, Any], progress: Callable[[float, float], None] | None = None,
                      timeout_s: float | None = None) -> tuple[dict[str, Any], bool]:
    """``(run record, interrupted)``: a Ctrl-C reaches the worker too, which stops and reports what it has."""
    proc = subprocess.Popen([sys.executable, "-m", "sparsecc.benchmarking.worker", json.dumps(kwargs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            if line.startswith(PROGRESS_TAG):
                if progress is not None:
                    _, done, total = line.split()
                    progress(float(done), float(total))
            else:
                tail.append(line.rstrip())
                del tail[:-40]

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    interrupted = False
    while True:
        try:
            stdout = proc.stdout.read()
            proc.wait(timeout=timeout_s)
            break
        except KeyboardInterrupt:
            interrupted = True  # the worker got the same SIGINT; wait for its partial record
    reader.join(timeout=5)
    for line in stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):]), interrupted
    rec = {"backend": kwargs.get("backend"), "threads": kwargs.get("threads"),
           "status": "interrupted" if interrupted else "error",
           "error": f"worker exited with code {proc.returncode} without a result; stderr tail:\n" + "\n".join(tail[-15:])}
    return rec, interrupted


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
