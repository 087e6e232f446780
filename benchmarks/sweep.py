"""The demo grid end to end with the joblib launcher: wall time and runs per minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        sweep = Path(folder) / "grid"
        env = {**os.environ, "WANDB_MODE": "disabled"}
        tic = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "robustfl",
                "-m",
                "experiment=grid",
                "hydra/launcher=joblib",
                f"hydra.sweep.dir={sweep}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - tic
        summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    completed = sum(s["status"] == "completed" for s in summaries)
    return {
        "runs": len(summaries),
        "completed": completed,
        "wall_s": wall,
        "runs_per_minute": 60 * len(summaries) / wall,
        "exit_code": result.returncode,
        "job_total_s": sum(s["timings"]["total_s"] for s in summaries),
    }
