"""Load one variant (sparse or dense build of one backend) as a callable on numpy inputs.

- ONNX Runtime: one session per thread setting, one inter-op thread, and
  spin-waiting off (two spinning sessions in one process steal each other's
  core; see backends/onnx/runtime.py). onnxruntime is used directly so this
  path never imports torch.
- torch: the program.pt2 module, eager, under ``inference_mode``; the thread
  count is ``torch.set_num_threads``.
- ExecuTorch: the backend's own runner; its thread pool can be sized once per
  process, so callers run one thread setting per process (see worker.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from sparsecc.core.ort_session import feed_order, open_session, session_options

from sparsecc.bundle.reader import Variant
from sparsecc.errors import BenchError

__all__ = ["Loaded", "load_variant"]


class Loaded:
    """A loaded variant: ``run(inputs)`` executes once; ``load_s`` is the load/initialisation time."""

    def __init__(self, variant: Variant, run: Callable[[Sequence[np.ndarray]], Any], load_s: float, handle: Any = None):
        self.variant, self.run, self.load_s, self.handle = variant, run, load_s, handle


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BenchError("the onnx backend needs onnxruntime: pip install 'sparsecc[onnx]'") from e
    return onnxruntime


def _load_onnx(v: Variant, threads: int | None, profile_prefix: str | None = None) -> Loaded:
    _ort()
    library = v.files().get("custom_ops_library")  # the onnx-custom-ops target: sparsecc.SparseMatMul's .so
    t0 = time.perf_counter()
    session = open_session(v.path, session_options(threads, profile_prefix), library)
    load_s = time.perf_counter() - t0
    specs = v.artifact["inputs"] if v.artifact else []
    args = session.get_inputs()
    # by name, else position: the exporter renames some inputs and drops those the graph does not read
    feed = list(zip([a.name for a in args], feed_order([(s["name"], s["dtype"], len(s["shape"])) for s in specs], args)))
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: Sequence[np.ndarray]) -> Any:
        return session.run(outputs, {name: inputs[i] for name, i in feed})

    return Loaded(v, run, load_s, session)


def _load_torch(v: Variant, threads: int | None) -> Loaded:
    import torch

    from sparsecc.core.program import load_program

    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    program = load_program(v.path)
    module = program.module()
    load_s = time.perf_counter() - t0
    # The flat inputs go back into the program's signature: keyword inputs
    # (MiniLM's input_ids=..., attention_mask=...) as keywords, not positions.
    in_spec = program.call_spec.in_spec

    def run(inputs: Sequence[np.ndarray]) -> Any:
        tensors = [torch.from_numpy(a) for a in inputs]
        with torch.inference_mode():
            if in_spec is not None and in_spec.num_leaves == len(tensors):
                args, kwargs = torch.utils._pytree.tree_unflatten(tensors, in_spec)
                return module(*args, **kwargs)
            return module(*tensors)

    return Loaded(v, run, load_s, module)


def _load_with_backend(backend: str, v: Variant, threads: int | None) -> Loaded:
    """A variant loaded by its backend's own runner, which takes torch tensors."""
    import torch

    from sparsecc.backends import Artifact, get_backend

    t0 = time.perf_counter()
    runner = get_backend(backend).load(Artifact.from_dict(v.artifact, v.root), threads)
    load_s = time.perf_counter() - t0

    def run(inputs: Sequence[np.ndarray]) -> Any:
        return runner([torch.from_numpy(a) for a in inputs])

    return Loaded(v, run, load_s, runner)


def _load_torch_sparse(v: Variant, threads: int | None) -> Loaded:
    import sparsecc.kernels as kernels

    kernels.load()  # build/load the sparse kernels outside the model's load time
    return _load_with_backend("torch-sparse", v, threads)


def _load_executorch(v: Variant, threads: int | None) -> Loaded:
    from sparsecc.backends.executorch import _deps

    # import the runtime's extension modules first: that is a once-per-process cost, not this model's load time
    _deps.runtime()
    _deps.portable_lib()
    return _load_with_backend(v.backend, v, threads)  # executorch-custom-ops: its runner loads the kernel library


def load_variant(v: Variant, threads: int | None, profile_prefix: str | None = None) -> Loaded:
    """Load ``v`` with ``threads`` intra-op threads (None: the runtime's default)."""
    if not v.path.is_file():
        raise BenchError(f"{v.backend} {v.name} model {v.path} does not exist")
    if v.backend in ("onnx", "onnx-custom-ops"):  # the latter with libsparsecc_ort.so registered
        return _load_onnx(v, threads, profile_prefix)
    if v.backend == "torch":
        return _load_torch(v, threads)
    if v.backend in ("executorch", "executorch-custom-ops"):
        return _load_executorch(v, threads)
    if v.backend == "torch-sparse":
        return _load_torch_sparse(v, threads)
    raise BenchError(f"unknown backend {v.backend!r}")
