"""The one interleaved timer: call order, warm-up, rounds, budgets, interrupts (no latency measured)."""

from __future__ import annotations

import math

import pytest

from sparsecc.core import timing
from sparsecc.core.timing import time_interleaved


def _recorder(calls: list[str], name: str):
    return lambda: calls.append(name)


def test_warmup_then_rounds_alternate_order():
    calls: list[str] = []
    t = time_interleaved({"a": _recorder(calls, "a"), "b": _recorder(calls, "b"), "c": _recorder(calls, "c")},
                         warmup=2, rounds=3)
    # each variant warms up on its own (2 calls), then rounds A B C / C B A / A B C
    assert calls == ["a", "a", "b", "b", "c", "c"] + list("abc") + list("cba") + list("abc")
    assert {k: len(v) for k, v in t.samples_s.items()} == {"a": 3, "b": 3, "c": 3}
    assert set(t.first_run_s) == {"a", "b", "c"} and not t.interrupted
    assert t.calls_per_sample == {"a": 1, "b": 1, "c": 1}
    assert all(m >= 0 for m in t.medians().values())


def test_sample_s_repeats_short_calls_and_divides_back(monkeypatch):
    # a fake clock: each call of the variant advances it by 1 ms, nothing else does
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls = [0]

    def step():
        calls[0] += 1
        now[0] += 1e-3

    t = time_interleaved({"x": step}, warmup=1, rounds=4, sample_s=0.010)
    assert t.calls_per_sample == {"x": 10}
    assert calls[0] == 1 + 1 + 4 * 10  # warm-up, the call that sets the count, 4 samples of 10
    assert t.samples_s["x"] == pytest.approx([1e-3] * 4)
    assert t.medians()["x"] == pytest.approx(1e-3)
    assert t.first_run_s["x"] == pytest.approx(1e-3)


def test_time_budget_stops_rounds_and_reports_seconds(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def step():
        now[0] += 0.25

    seen: list[tuple[float, float]] = []
    t = time_interleaved({"a": step, "b": step}, rounds=None, time_budget_s=1.0,
                         progress=lambda done, total: seen.append((done, total)))
    # two variants at 0.25 s: each round takes 0.5 s, so the 1 s budget holds two rounds
    assert {k: len(v) for k, v in t.samples_s.items()} == {"a": 2, "b": 2}
    assert seen == [(0.5, 1.0), (1.0, 1.0)]


def test_rounds_progress_counts_rounds():
    seen: list[tuple[float, float]] = []
    time_interleaved({"a": lambda: None}, rounds=3, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_needs_rounds_or_budget():
    with pytest.raises(ValueError, match="give rounds or time_budget_s"):
        time_interleaved({"a": lambda: None}, rounds=None)


def _interrupt_after(n: int):
    count = [0]

    def fn():
        count[0] += 1
        if count[0] > n:
            raise KeyboardInterrupt

    return fn


def test_interrupt_keeps_equal_samples_when_interruptible():
    # "b" raises on its 4th call: warm-up 1 + rounds 1, 2 (a b / b a) + round 3 cut short after "a"
    t = time_interleaved({"a": lambda: None, "b": _interrupt_after(3)}, rounds=10, interruptible=True)
    assert t.interrupted
    assert {k: len(v) for k, v in t.samples_s.items()} == {"a": 2, "b": 2}


def test_interrupt_propagates_by_default():
    with pytest.raises(KeyboardInterrupt):
        time_interleaved({"a": _interrupt_after(2)}, rounds=10)


def test_medians_of_a_variant_without_samples_is_nan():
    assert math.isnan(timing.Timing({"a": []}).medians()["a"])
