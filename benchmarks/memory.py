"""Peak memory of one round with many clients of the CNN on MNIST, with and without
chunking (each measurement in a fresh process; Linux max RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SCRIPT = """
import resource, sys, tempfile
from robustfl.api import run_experiment
overrides = sys.argv[1:]
run_experiment(overrides, tempfile.mkdtemp())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_mib(overrides: list[str]) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def run(root: str) -> list[dict]:
    base = [
        "dataset=mnist",
        f"dataset.root={root}",
        "model=cnn",
        "fl.num_clients=1000",
        "fl.num_byzantine=0",
        "fl.batch_size=8",
        "fl.local_steps=1",
        "fl.rounds=1",
        "progress=false",
        "checkpoint_every=0",
    ]
    rows = []
    for defense in ("mean", "median"):
        for chunk in (0, 100):
            rows.append(
                {
                    "defense": defense,
                    "chunk_size": chunk,
                    "peak_mib": peak_mib([*base, f"defense={defense}", f"fl.chunk_size={chunk}"]),
                }
            )
    return rows


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    print(json.dumps(run(folder), indent=2))
