"""The same config on this project's engine and on Flower's simulation engine: rounds per
second at 20 and 100 clients (digits, the default MLP, batches of 8, ALIE against the median,
every client every round), end to end (a Flower run starts Ray and its actors every time;
the engine is warmed up once) and over the rounds after the first."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from robustfl.api import compose_config, run_experiment

CLIENTS = (20, 100)


def overrides(num_clients: int, rounds: int) -> list[str]:
    return [
        f"fl.num_clients={num_clients}",
        f"fl.num_byzantine={num_clients // 5}",
        f"fl.rounds={rounds}",
        "fl.eval_every=1",
        "fl.batch_size=8",  # 100 clients hold 14 digits each
        "attack=alie",
        "defense=median",
        "progress=false",
        "tracker.mode=disabled",
        "checkpoint_seconds=0",
    ]


def steady_rounds_per_second(run_dir: Path) -> float:
    """Rounds 2 .. R over the time between the first and the last evaluation."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    return (last["round"] - first["round"]) / (last["elapsed_s"] - first["elapsed_s"])


def run(quick: bool = False) -> list[dict]:
    from robustfl.flower.cli import run_on_flower  # needs the flower extra

    rounds = 5 if quick else 20
    with tempfile.TemporaryDirectory() as folder:  # imports and first-call costs, once
        run_experiment(overrides(CLIENTS[0], 2), Path(folder))
    rows = []
    for num_clients in CLIENTS[:1] if quick else CLIENTS:
        with tempfile.TemporaryDirectory() as folder:
            row = {"clients": num_clients, "rounds": rounds}
            for name, job in (
                ("engine", lambda o, d: run_experiment(o, d)),
                ("flower", lambda o, d: run_on_flower(compose_config(o), d)),
            ):
                run_dir = Path(folder) / name
                tic = time.perf_counter()
                summary = job(overrides(num_clients, rounds), run_dir)
                wall = time.perf_counter() - tic
                row[f"{name}_wall_s"] = wall
                row[f"{name}_rounds_per_s"] = rounds / wall
                row[f"{name}_steady_rounds_per_s"] = steady_rounds_per_second(run_dir)
                row[f"{name}_accuracy"] = summary["final"]["accuracy"]
            row["steady_ratio"] = (
                row["engine_steady_rounds_per_s"] / row["flower_steady_rounds_per_s"]
            )
            rows.append(row)
    return rows
