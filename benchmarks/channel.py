"""Privacy and compression: the engine's round with each enabled, against the same round
without (MLP workloads, the coordinate-wise median, rounds taken in turns)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from benchmarks.common import interleaved_times
from robustfl.api import compose_config
from robustfl.build import build
from robustfl.engine import Simulation, Stopwatch, run_round

WORKLOADS = {
    "MLP, 50 clients, digits": ["dataset=digits", "fl.num_clients=50"],
    "MLP, 200 clients": [
        "dataset=synthetic",
        "dataset.num_samples=50000",
        "fl.num_clients=200",
    ],
}
COMMON = [
    "model=mlp_128",
    "fl.num_byzantine=0",
    "fl.local_steps=5",
    "fl.batch_size=16",
    "defense=median",
    "threads=0",
]
CHANNELS = {
    "plain": [],
    "local DP": ["privacy=local"],
    "central DP": ["privacy=central"],
    "top-k 1% + EF": ["compression=top_k"],
    "rand-k 1%": ["compression=rand_k"],
    "QSGD 16 levels": ["compression=qsgd"],
    "sign": ["compression=sign"],
    "local DP + top-k": ["privacy=local", "compression=top_k"],
}


def stepper(sim: Simulation) -> Callable[[], None]:
    """One more round of ``sim`` per call."""
    rounds = iter(range(1_000_000))
    return lambda: run_round(sim, next(rounds), Stopwatch({}))


def run(quick: bool = False) -> list[dict]:
    rows = []
    workloads = list(WORKLOADS.items())[:1] if quick else list(WORKLOADS.items())
    for workload, overrides in workloads:
        sims = {
            name: build(compose_config([*COMMON, *overrides, *extra]))
            for name, extra in CHANNELS.items()
        }
        steps = {name: stepper(sim) for name, sim in sims.items()}
        times = interleaved_times(steps, repeat=40, warmup=3)
        plain = statistics.median(times["plain"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append(
                {
                    "workload": workload,
                    "channel": name,
                    "round_ms": 1e3 * median,
                    "ratio_to_plain": median / plain,
                    "bits_per_client": sims[name].compression.bits_per_message(),
                }
            )
    return rows
