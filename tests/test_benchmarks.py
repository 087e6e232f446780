"""The benchmarks' timing helper: references and the measured code take turns."""

import time

from benchmarks.common import interleaved_median_times


def test_interleaved_median_times_calls_each_function_in_turn():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("ours", "ref")}
    times = interleaved_median_times(fns, repeat=4, warmup=2)
    assert calls == ["ours", "ours", "ref", "ref"] + ["ours", "ref"] * 4
    assert set(times) == {"ours", "ref"}
    assert all(t >= 0 for t in times.values())


def test_interleaved_median_times_stops_at_the_budget():
    calls: list[str] = []
    fns = {"slow": lambda: calls.append("slow") or time.sleep(0.02)}
    interleaved_median_times(fns, repeat=50, warmup=0, budget_s=0.05)
    assert 2 <= len(calls) < 10
