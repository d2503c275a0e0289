"""Time dense against 2:4 on the GPU: CUDA-graph replays, interleaved, medians.

Used by `swap_semi_structured(..., tokens=N)` to keep a layer dense where the
2:4 kernel is not faster at the shape it will run, and by the benchmarks in
``bench/``. Graph replays leave only kernel time: launched eagerly, every
cuSPARSELt product also pays about a millisecond of host time to set up its
plan (measured on an H200, torch 2.11), which would decide every comparison.
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["graphed", "cuda_event_times", "measure_speedup"]


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph; returns the replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture: allocator, library handles, plans
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def cuda_event_times(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 10) -> dict[str, list[float]]:
    """CUDA-event timings (ms) of zero-argument callables, run in turn, the order reversed every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return times


def measure_speedup(dense_weight: torch.Tensor, sparse_weight: torch.Tensor, tokens: int, rounds: int = 25) -> float:
    """Median dense time / median 2:4 time of ``F.linear`` on ``tokens`` random rows (bias left out)."""
    x = torch.randn(tokens, dense_weight.shape[1], device=dense_weight.device, dtype=dense_weight.dtype)
    with torch.inference_mode():
        fns = {"dense": graphed(lambda: F.linear(x, dense_weight)), "sparse": graphed(lambda: F.linear(x, sparse_weight))}
        times = cuda_event_times(fns, rounds, warmup=3)
    return statistics.median(times["dense"]) / statistics.median(times["sparse"])
