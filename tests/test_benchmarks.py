"""The benchmarks' timing helper: references and the measured code take turns."""

import time

from benchmarks.common import interleaved_median_times


def test_interleaved_median_times_calls_each_function_in_turn():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_median_times(fns, repeat=30, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    turns = [calls[6 + 3 * k : 9 + 3 * k] for k in range(30)]
    assert all(sorted(turn) == ["a", "b", "c"] for turn in turns)  # each once per turn
    # in a changing order: each function runs right after each other one at times
    follows = {(turn[i - 1], turn[i]) for turn in turns for i in (1, 2)}
    assert follows == {(p, q) for p in "abc" for q in "abc" if p != q}
    assert set(times) == {"a", "b", "c"}
    assert all(t >= 0 for t in times.values())


def test_interleaved_median_times_stops_at_the_budget():
    calls: list[str] = []
    fns = {"slow": lambda: calls.append("slow") or time.sleep(0.02)}
    interleaved_median_times(fns, repeat=50, warmup=0, budget_s=0.05)
    assert 2 <= len(calls) < 10
