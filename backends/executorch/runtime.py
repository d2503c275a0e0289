"""Run a ``.pte`` with the ExecuTorch runtime (XNNPACK and portable kernels, CPU).

Threads: XNNPACK runs on ExecuTorch's one process-wide thread pool. The
Python runtime can resize it only through
``portable_lib._unsafe_reset_threadpool``, which is safe only before any
program is loaded (resizing it back and forth in one process crashed or
deadlocked). So the pool is sized once, by the first load that asks for a
thread count; asking for a different count later in the same process raises
`ThreadCountError`. Measure each thread count in its own process.

Custom ops: a ``.pte`` from the ``executorch-custom-ops`` target calls
sparsecc's kernels, which live in ``libsparsecc_executorch.so``. The runner
loads that library (``library``) before the program; without it the runtime
cannot bind the ops and the program does not load (`PteFileError` names the
ops and the library). A kernel that rejects its inputs fails the call with
`CustomOpError`, which carries the kernel's own message.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import torch

from sparsecc.backends.base import Runner, TensorSpec, check_inputs

from . import _deps
from .dynamic_dims import DynamicDim, check_dims
from sparsecc.errors import SparseccError

__all__ = ["ExecuTorchRunner", "ThreadCountError", "PteFileError", "CustomOpError", "set_threads_once",
           "thread_count", "note_program_loaded"]


class PteFileError(SparseccError, RuntimeError):
    """A ``.pte`` file the ExecuTorch runtime cannot load; the message names the file."""


class CustomOpError(SparseccError, RuntimeError):
    """A sparsecc kernel in the ``.pte`` rejected its inputs; the message is the kernel's, naming the op."""


class ThreadCountError(SparseccError, RuntimeError):
    """The thread pool was already sized (or in use) with another thread count."""


_lock = threading.Lock()
_state = {"set_to": None, "loaded": False}


def thread_count() -> int:
    """The size of ExecuTorch's thread pool in this process."""
    return int(_deps.portable_lib()._threadpool_get_thread_count())


def set_threads_once(threads: int | None) -> None:
    """Size the process-wide thread pool, once, before the first program loads."""
    if threads is None:
        return
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with _lock:
        current = thread_count()
        if threads == current:
            _state["set_to"] = threads
            return
        if _state["set_to"] is not None or _state["loaded"]:
            raise ThreadCountError(
                f"ExecuTorch's thread pool already runs {current} threads in this process and cannot be "
                f"resized safely to {threads}; run each thread count in its own process"
            )
        _deps.portable_lib()._unsafe_reset_threadpool(threads)
        _state["set_to"] = threads


def note_program_loaded() -> None:
    """Record that a program was loaded (by anyone in this process): the pool may no longer be resized."""
    with _lock:
        _state["loaded"] = True


class ExecuTorchRunner(Runner):
    """A loaded ``forward`` method that takes and returns flat torch tensors."""

    def __init__(
        self,
        path: Path,
        inputs: Sequence[TensorSpec],
        dims: Sequence[DynamicDim] = (),
        threads: int | None = None,
        library: Path | None = None,
    ):
        set_threads_once(threads)
        runtime = _deps.runtime().Runtime.get()
        self.library = None
        if library is not None:  # EtLibraryError (naming the file) when it cannot be loaded
            from sparsecc.kernels.et_library import load_et_library

            self.library = load_et_library(library)
        note_program_loaded()
        self.path = Path(path)
        self.inputs = list(inputs)
        self.dims = list(dims)
        # The program owns the method's memory: keep both alive together.
        try:
            self.program = runtime.load_program(self.path)
            self.method = self.program.load_method("forward")
        except Exception as e:  # the runtime reports a bad file as a bare RuntimeError/ValueError
            raise PteFileError(f"{self.path}: the ExecuTorch runtime cannot load this program "
                               f"({type(e).__name__}: {e}){_missing_ops(self.path, runtime)}") from e

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_inputs(self.inputs, inputs)
        check_dims(self.dims, self.inputs, inputs)
        # ExecuTorch reads inputs as dense, contiguous buffers.
        args = [t.detach().contiguous() for t in inputs]
        if self.library is None:
            outs = self.method.execute(args)
        else:
            from sparsecc.kernels import et_library

            et_library.clear_error()
            try:
                outs = self.method.execute(args)
            except RuntimeError as e:  # the runtime says only "error 0x12": the kernel kept its message
                why = et_library.last_error()
                if not why:
                    raise
                raise CustomOpError(f"{self.path}: {why}") from e
        return [o if isinstance(o, torch.Tensor) else torch.as_tensor(o) for o in outs]


def _missing_ops(path: Path, runtime: object) -> str:
    """A sentence naming sparsecc's ops the program calls and this runtime lacks (the library not loaded)."""
    try:
        from .pte import PteReader

        ops = [o for o in PteReader.open(path).operators() if o.startswith("sparsecc::")]
        have = set(runtime.operator_registry.operator_names)  # type: ignore[attr-defined]
    except Exception:  # only an explanation: never hide the load error behind another
        return ""
    missing = [o for o in ops if o not in have]
    if not missing:
        return ""
    from sparsecc.kernels.et_library import LIBRARY_NAME

    return (f"; it calls {', '.join(sorted(set(missing)))}, which live in {LIBRARY_NAME}: load it first "
            "(the artifact ships it; sparsecc.kernels.et_library.load_et_library(path))")
