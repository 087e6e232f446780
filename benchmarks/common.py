"""Timing helpers: medians over repetitions after warm-up."""

from __future__ import annotations

import random
import resource
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(
    fn: Callable[[], object],
    repeat: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    budget_s: float = 20.0,
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs
    (fewer repetitions when one run takes a large share of ``budget_s``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tic)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return statistics.median(times)


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    repeat: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    budget_s: float = 20.0,
) -> dict[str, list[float]]:
    """Wall times in seconds of ``repeat`` calls of each of ``fns``, measured in turns: every
    repetition calls each function once, so a change in the machine's load during the
    measurement weighs on all of them alike instead of on whichever ran in that minute (fewer
    repetitions once the turns have taken ``budget_s`` per function in all).

    Each repetition takes the functions in a new (seeded) random order, so that none always
    runs right after the same one: a call right after ``torch.median`` (whose threads are
    still spinning) ran 10 to 15 % slower than after numpy's partition.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    order = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(repeat):
        for name in order.sample(list(fns), len(fns)):
            tic = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - tic)
        if time.perf_counter() - start > budget_s * len(fns):
            break
    return times


def interleaved_median_times(
    fns: dict[str, Callable[[], object]], repeat: int = 5, **kwargs
) -> dict[str, float]:
    """The median of each function's :func:`interleaved_times`."""
    times = interleaved_times(fns, repeat, **kwargs)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def square_matmul(device: str = "cpu", size: int = 2048) -> tuple[Callable[[], object], float]:
    """A float32 ``size x size`` matrix product to time, and its FLOPs: the machine's rate
    for compute floors (take the *best* time: a floor must not rise when a busy moment
    slows the reference)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return (lambda: a @ b), 2.0 * size**3


def round_context(n: int, d: int, defense=None, num_byzantine: int = 0):
    """A seeded round context for ``n`` clients of dimension ``d`` whose last
    ``num_byzantine`` rows are Byzantine (what a defense's ``prepare`` and an attack read)."""
    from robustfl.contracts import RoundContext

    return RoundContext(
        round=0,
        defense=defense,
        global_params=torch.zeros(d),
        generator=torch.Generator().manual_seed(0),
        num_clients=n,
        num_byzantine=num_byzantine,
        byzantine_rows=torch.arange(n - num_byzantine, n),
        sample_counts=torch.ones(n),
        client_ids=torch.arange(n),
        defense_generator=torch.Generator().manual_seed(1),
        server_update=lambda: torch.randn(d, generator=torch.Generator().manual_seed(2)),
    )
