"""Shared fixtures. W&B is disabled unless a test turns it on; nothing touches the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# The same examples on every run: a property test must not turn CI red by chance. Explore with
# `pytest --hypothesis-profile=explore` (random examples, more of them).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile("default")

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Each test starts from the same global torch random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def run_cli(*args: str, cwd: Path, clean_wandb_env: bool = False, **env: str):
    """Run ``python -m robustfl ARGS`` in ``cwd`` with W&B disabled, or, with
    ``clean_wandb_env``, with every ``WANDB_*`` variable removed (then ``env`` decides)."""
    environment = {
        k: v for k, v in os.environ.items() if not (clean_wandb_env and k.startswith("WANDB_"))
    }
    if not clean_wandb_env:
        environment["WANDB_MODE"] = "disabled"
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "robustfl", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


PRE_TARGETS = {
    "nnm": "defenses.nnm.NearestNeighborMixing",
    "bucketing": "defenses.bucketing.Bucketing",
    "clipping": "defenses.clipping.Clipping",
}


def pre_nodes(**stages: dict) -> dict:
    """A ``pre`` node as ``pre=[...]`` composes it: ``pre_nodes(nnm={"f": 2})``."""
    return {name: {"_target_": PRE_TARGETS[name], **params} for name, params in stages.items()}


#: Small, fast settings for end-to-end runs on digits.
FAST = [
    "fl.num_clients=10",
    "fl.num_byzantine=2",
    "fl.clients_per_round=10",
    "fl.rounds=4",
    "fl.eval_every=2",
    "progress=false",
]


class Stop(Exception):
    pass


class StopAfter:
    """A tracker that kills the run after ``records`` evaluations, like a preemption."""

    def __init__(self, records: int) -> None:
        self.records = records

    def start(self, config, run_dir):
        pass

    def log(self, record, step):
        self.records -= 1
        if self.records == 0:
            raise Stop

    def finish(self, summary, history):
        pass


def pytest_configure(config):
    # Parallel workers (pytest-xdist) share the 2 cores: one torch thread each avoids the
    # oversubscription that made a 2-worker run ~9x slower than a serial one.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
