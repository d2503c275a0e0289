"""`bench`: dense vs sparse latency, memory and size for each bundle, backend and thread setting."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsecc.bundle.reader import BACKENDS, Bundle
from sparsecc.errors import BenchError
from .host import host_info, load_average
from .inputs import resolve_dims
from .int8_reference import CPU_BACKENDS, int8_dense_copy, int8_sparse_copy
from .result import BenchResult
from .schema import SCHEMA_ID

__all__ = ["bench"]

# (description, done, total) after each round of a measurement
Progress = Callable[[str, float, float], None]


def _bundle_record(b: Bundle) -> dict[str, Any]:
    layers = b.manifest.sparsity_layers
    structured = b.manifest.structured_summary
    return {
        "path": str(b.path),
        "model": b.model,
        "recipe": b.recipe,
        "has_dense_reference": b.has_dense(),
        "sparse_layers": len(b.sparse_layers),
        "layers": [{k: lay.get(k) for k in ("layer", "role", "pattern", "achieved", "status", "flops", "params")}
                   for lay in layers],
        "runs": [],
        # structured bundles (channels / heads removed): how much smaller the model is
        **({"structured": {k: v for k, v in structured.items()
                           if k in ("macs", "macs_ratio", "params", "params_ratio", "pruned_groups")}}
           if structured else {}),
    }


def _check_backends(backends: Sequence[str] | None) -> list[str] | None:
    if backends is None:
        return None
    for be in backends:
        if be not in BACKENDS:
            raise BenchError(f"unknown backend {be!r}; choose from {', '.join(BACKENDS)}")
    return list(backends)


def bench(
    bundles: str | Path | Sequence[str | Path], *, backends: Sequence[str] | None = None,
    threads: Sequence[int | None] = (1,), batch: int | None = None, seq: int | None = None, warmup: int = 10,
    runs: int | None = 100, time_budget_s: float | None = None, profile: bool = True, profile_runs: int = 20,
    seed: int = 0, isolate: bool = True, progress: Progress | None = None,
) -> BenchResult:
    """Benchmark each bundle's sparse model against its dense reference.

    ``backends``: any of onnx, executorch, torch (default: every one the
    bundle has). ``threads``: intra-op thread counts, each measured
    separately. ``runs`` rounds (A B per round) or, when ``time_budget_s``
    is given, as many rounds as fit in that many seconds per measurement.
    ``isolate`` runs each (bundle, backend, threads) in its own process
    (ExecuTorch always is: its thread pool is sized once per process).
    A Ctrl-C stops the run; the result keeps what was measured and says so.
    """
    if isinstance(bundles, (str, Path)):
        bundles = [bundles]
    if not bundles:
        raise BenchError("no bundle given")
    if time_budget_s is not None:
        runs = None
    if runs is not None and runs < 1:
        raise BenchError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise BenchError(f"warmup must be >= 0, got {warmup}")
    opened = [Bundle(p) for p in bundles]
    for b in opened:  # a bundle changed since compile is refused before anything is timed
        b.check_files()
    wanted = _check_backends(backends)
    for b in opened:  # a bad --batch/--seq fails here, before any process starts
        resolve_dims(b.inputs, b.dynamic_dims, batch, seq, where=str(b.path / "manifest.json"))
    threads = list(threads) or [None]
    data: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interrupted": False,
        "machine": host_info(),
        "settings": {"backends": wanted, "threads": threads, "batch": batch, "seq": seq, "warmup": warmup,
                     "runs": runs, "time_budget_s": time_budget_s, "profile": profile, "profile_runs": profile_runs,
                     "seed": seed, "isolate": isolate},
        "bundles": [],
    }
    result = BenchResult(data)
    try:
        for b in opened:
            rec = _bundle_record(b)
            data["bundles"].append(rec)
            present = b.backends()
            # quantized once per bundle, here, for every CPU backend's run (workers read the copy)
            int8 = int8_dense_copy(b) if set(wanted or present) & set(CPU_BACKENDS) else None
            int8_sparse = int8_sparse_copy(b) if int8 is not None and "onnx" in (wanted or present) else None
            for be in wanted or present:
                if be not in present:
                    rec["runs"].append({"backend": be, "threads": None, "status": "error",
                                        "error": f"bundle {b.path} has no {be} artifact (has: {', '.join(present)})"})
                    continue
                for t in threads:
                    desc = f"{b.model} {be} threads={t}"
                    step = (lambda d, n, desc=desc: progress(desc, d, n)) if progress else None
                    kwargs = dict(bundle_path=str(b.path), backend=be, threads=t, batch=batch, seq=seq,
                                  warmup=warmup, runs=runs, time_budget_s=time_budget_s, profile=profile,
                                  profile_runs=profile_runs, seed=seed,
                                  int8_model=str(int8) if int8 is not None and be in CPU_BACKENDS else None,
                                  int8_sparse_model=str(int8_sparse) if int8_sparse is not None and be == "onnx"
                                  else None)
                    if isolate or be.startswith("executorch"):  # its thread pool is sized once per process
                        from .worker import run_in_subprocess
                        run, interrupted = run_in_subprocess(kwargs, step)
                    else:
                        from .backend_run import run_backend
                        run = run_backend(progress=step, **kwargs)
                        interrupted = run["status"] == "interrupted"
                    rec["runs"].append(run)
                    if interrupted or run["status"] == "interrupted":
                        raise KeyboardInterrupt
    except KeyboardInterrupt:
        data["interrupted"] = True
    data["machine"]["load_avg_end"] = load_average()
    return result
