"""What a long command is doing, with elapsed time, also when its output is piped.

Rich's spinners and bars draw nothing on a pipe (``make demo | tee``), and a
single step such as an export or a lowering can run for minutes without a
callback. `Activity` prints one line per step and a heartbeat thread repeats
the current step with its elapsed time whenever nothing was printed for
``every`` seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from rich.console import Console

__all__ = ["Activity", "HEARTBEAT_S"]

HEARTBEAT_S = 10.0


class Activity:
    """``with Activity(console, "compile mlp") as act: act.step("lower onnx"); act.detail("fc1 3/10")``."""

    def __init__(self, console: Console, label: str, *, every: float = HEARTBEAT_S, quiet: bool = False):
        self.console = console
        self.label = label
        self.every = every
        self.quiet = quiet
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = self._step_t0 = self._last = time.monotonic()
        self._step = ""
        self._detail = ""

    def __enter__(self) -> "Activity":
        self._t0 = self._step_t0 = self._last = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="sparsecc-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.every)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def step(self, message: str) -> None:
        """A new step starts: print it with the elapsed time."""
        with self._lock:
            self._step, self._detail = message, ""
            self._step_t0 = time.monotonic()
            self._say(f"{self.label}: {message}")

    def detail(self, message: str) -> None:
        """Progress inside the current step; shown by the next heartbeat, not printed now."""
        with self._lock:
            self._detail = message

    def _say(self, text: str) -> None:
        self._last = time.monotonic()
        if not self.quiet:
            self.console.print(f"[{self.elapsed:6.1f}s] {text}", markup=False, highlight=False)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every / 2)):
            with self._lock:
                now = time.monotonic()
                if now - self._last < self.every:
                    continue
                what = self._step or "working"
                detail = f" ({self._detail})" if self._detail else ""
                self._say(f"{self.label}: still {what}{detail}, {now - self._step_t0:.0f}s in this step")
