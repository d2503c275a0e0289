"""ONNX Runtime session options shared by the ONNX backend and `sparsecc bench`.

Torch-free on purpose: `sparsecc bench` runs ONNX bundles on machines with
only onnxruntime installed. Sessions use one inter-op thread and no
spin-waiting (``session.intra_op.allow_spinning = 0``): two spinning sessions
in one process steal each other's cores and skew every timing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from sparsecc.errors import DependencyError, UsageError

__all__ = ["onnxruntime_module", "session_options", "FeedMismatchError", "feed_order", "CUSTOM_OP_DOMAIN",
           "CUSTOM_OP_LIBRARY", "CustomOpLibraryError", "open_session"]

CUSTOM_OP_DOMAIN = "sparsecc"  # sparsecc.SparseMatMul, in libsparsecc_ort.so (sparsecc.kernels.ort_library)
CUSTOM_OP_LIBRARY = "libsparsecc_ort.so"


class FeedMismatchError(UsageError, ValueError):
    """The session's inputs cannot be matched to the program's inputs; the message names the one at fault."""


_ORT_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16",
               "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def _fits(spec: tuple[str, str, int | None], arg: Any) -> bool:
    _name, dtype, rank = spec  # dtype "" / rank None: not known to the caller
    ort_dtype = _ORT_DTYPES.get(str(arg.type).removeprefix("tensor(").removesuffix(")"))
    shape = arg.shape if isinstance(arg.shape, (list, tuple)) else None
    return (not dtype or ort_dtype is None or ort_dtype == dtype) and (rank is None or shape is None or len(shape) == rank)


def feed_order(specs: Sequence[tuple[str, str, int | None]], session_inputs: Sequence[Any]) -> list[int]:
    """For each session input, the index of the program input (name, dtype, rank) that feeds it.

    Matched by name first; the rest by position among the unmatched ones (the
    exporter may rename an input, ``input_1`` -> ``input``, and drops inputs
    the graph does not read), with dtype and rank checked. A session input
    that matches nothing raises `FeedMismatchError`: no input is dropped silently.
    """
    by_name = {s[0]: i for i, s in enumerate(specs)}
    order: list[int | None] = [by_name.get(a.name) for a in session_inputs]
    used = {i for i in order if i is not None}
    free = [i for i in range(len(specs)) if i not in used]
    for k, arg in enumerate(session_inputs):
        if order[k] is not None:
            continue
        # Keep the order: a renamed input comes after the program inputs matched before it.
        floor = max((i for i in order[:k] if i is not None), default=-1)
        pick = next((i for i in free if i > floor and _fits(specs[i], arg)), None)
        if pick is None:
            want = ", ".join(f"{n}: {d}, rank {r}" for n, d, r in specs)
            raise FeedMismatchError(f"the ONNX model's input {arg.name!r} ({arg.type}, shape {arg.shape}) matches "
                                    f"no input of the program ({want}) by name or position")
        order[k] = pick
        free.remove(pick)
    return [int(i) for i in order]  # type: ignore[arg-type]


def onnxruntime_module() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("ONNX Runtime is not installed: pip install 'sparsecc[onnx]'") from e
    return onnxruntime


def session_options(threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """CPU session options: ``threads`` intra-op threads (None: ORT's default), optional profiling."""
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


class CustomOpLibraryError(DependencyError, RuntimeError):
    """An ONNX model uses sparsecc's custom ops and their library is not loaded or not found."""


def _names_our_domain(message: str) -> bool:
    # ORT: "sparsecc:SparseMatMul(-1) is not a registered function/op" (or an unknown-domain complaint)
    return re.search(rf"\b{CUSTOM_OP_DOMAIN}\b", message) is not None and (
        "not a registered" in message or "domain" in message.lower())


def open_session(model: str | Path | bytes, opts: Any, custom_ops_library: str | Path | None = None) -> Any:
    """A CPU `InferenceSession`, with sparsecc's custom-op library registered when given.

    A model that uses the ``sparsecc`` domain without the library fails with
    `CustomOpLibraryError` naming the model and ``libsparsecc_ort.so``, not
    ONNX Runtime's bare unknown-op message.
    """
    ort = onnxruntime_module()
    label = "the ONNX model" if isinstance(model, bytes) else str(model)
    if custom_ops_library is not None:
        lib = Path(custom_ops_library)
        if not lib.is_file():
            raise CustomOpLibraryError(f"{label} uses sparsecc's custom ops, but their library {lib} is missing")
        opts.register_custom_ops_library(str(lib))
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail / InvalidGraph types
        if custom_ops_library is None and _names_our_domain(str(e)):
            raise CustomOpLibraryError(
                f"{label} uses the custom op {CUSTOM_OP_DOMAIN}.SparseMatMul: load it with the library "
                f"{CUSTOM_OP_LIBRARY} (shipped beside the model in the bundle): "
                f"opts.register_custom_ops_library('<folder>/{CUSTOM_OP_LIBRARY}') before InferenceSession; "
                f"ONNX Runtime said: {str(e)[:300]}") from e
        raise
