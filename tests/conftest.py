"""Shared fixtures. W&B is disabled unless a test turns it on; nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


#: Small, fast settings for end-to-end runs on digits.
FAST = [
    "fl.num_clients=10",
    "fl.num_byzantine=2",
    "fl.clients_per_round=10",
    "fl.rounds=4",
    "fl.eval_every=2",
    "progress=false",
]


def pytest_configure(config):
    # Parallel workers (pytest-xdist) share the 2 cores: one torch thread each avoids the
    # oversubscription that made a 2-worker run ~9x slower than a serial one.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
