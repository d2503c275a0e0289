"""Inputs of a requested batch size and sequence length, within the bundle's dynamic dims.

Dims come from the manifest: each input's shape names its dynamic dims
(``["batch", "seq"]``) and ``dynamic_dims`` gives their allowed ranges. The
dim named ``batch`` takes ``batch``; the other dynamic dim, if there is one,
takes ``seq``. Values: floats are standard normal; integer ids are drawn
below the largest id in the bundle's example inputs (so they stay inside the
vocabulary); attention masks are ones; token type ids are zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import BenchError

__all__ = ["resolve_dims", "build_inputs", "BATCH_DIM"]

BATCH_DIM = "batch"


def _example_arrays(bundle_path: Path) -> dict[str, np.ndarray]:
    path = bundle_path / "inputs" / "example.npz"
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _example_dims(inputs: list[dict[str, Any]], examples: dict[str, np.ndarray]) -> dict[str, int]:
    """The size each named dim has in the example inputs (the default when none is asked for)."""
    dims: dict[str, int] = {}
    arrays = list(examples.values())
    for i, spec in enumerate(inputs):
        arr = examples.get(spec["name"], arrays[i] if i < len(arrays) else None)
        if arr is None:
            continue
        for d, size in zip(spec["shape"], arr.shape):
            if isinstance(d, str):
                dims.setdefault(d, int(size))
    return dims


def resolve_dims(
    inputs: list[dict[str, Any]], ranges: dict[str, tuple[int, int]], batch: int | None, seq: int | None,
    defaults: dict[str, int] | None = None, where: str = "manifest.json",
) -> dict[str, int]:
    """``{dim name: size}`` for every named dim, checked against its range."""
    names = []
    for spec in inputs:
        names += [d for d in spec["shape"] if isinstance(d, str) and d not in names]
    defaults = defaults or {}
    other = [n for n in names if n != BATCH_DIM]
    if batch is not None and BATCH_DIM not in names:
        raise BenchError(f"batch={batch} was asked for, but the bundle's inputs have no dynamic 'batch' dim "
                         f"(named dims: {names or 'none'}; {where})")
    if seq is not None and not other:
        raise BenchError(f"seq={seq} was asked for, but the bundle's inputs have no dynamic dim besides batch "
                         f"(named dims: {names or 'none'}; {where})")
    if seq is not None and len(other) > 1:
        raise BenchError(f"seq={seq} is ambiguous: the bundle has several non-batch dims {other} ({where})")
    out = {}
    for n in names:
        lo, hi = ranges.get(n, (1, None))
        want = batch if n == BATCH_DIM else seq
        if want is None:
            want = defaults.get(n, 1 if n == BATCH_DIM else lo)
        if want < lo or (hi is not None and want > hi):
            flag = "--batch" if n == BATCH_DIM else "--seq"
            raise BenchError(f"{flag} {want} is outside the bundle's range for dim {n!r}: [{lo}, {hi}] ({where} dynamic_dims)")
        out[n] = int(want)
    return out


def _values(spec: dict[str, Any], shape: tuple[int, ...], example: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(spec["dtype"]) if spec["dtype"] != "bool" else np.dtype(bool)
    name = spec["name"].lower()
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if "mask" in name:
        return np.ones(shape, dtype=dtype)
    if "token_type" in name or "segment" in name:
        return np.zeros(shape, dtype=dtype)
    if "position" in name:
        return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    # ids: stay below the example's largest id, which the model is known to accept
    high = int(example.max()) + 1 if example is not None and example.size else 100
    low = int(example.min()) if example is not None and example.size else 0
    return rng.integers(max(low, 0), max(high, 1), size=shape).astype(dtype)


def build_inputs(
    bundle_path: str | Path, inputs: list[dict[str, Any]], ranges: dict[str, tuple[int, int]],
    batch: int | None = None, seq: int | None = None, seed: int = 0,
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Flat numpy inputs in signature order, and the dim sizes they were built with."""
    bundle_path = Path(bundle_path)
    examples = _example_arrays(bundle_path)
    dims = resolve_dims(inputs, ranges, batch, seq, _example_dims(inputs, examples),
                        where=str(bundle_path / "manifest.json"))
    rng = np.random.default_rng(seed)
    arrays = list(examples.values())
    out = []
    for i, spec in enumerate(inputs):
        shape = tuple(dims[d] if isinstance(d, str) else int(d) for d in spec["shape"])
        example = examples.get(spec["name"], arrays[i] if i < len(arrays) else None)
        out.append(_values(spec, shape, example, rng))
    return out, dims
