import torch

from attacks.free_rider import FreeRider
from robustfl.api import run_experiment


def test_free_rider_rows_are_zero():
    out = FreeRider().poison_gradients(torch.randn(5, 3), torch.randn(2, 3), ctx=None)
    assert torch.equal(out, torch.zeros(2, 3))


def test_free_rider_runs_end_to_end(tmp_path):
    summary = run_experiment(["attack=free_rider", "fl.rounds=3", "progress=false"], tmp_path)
    assert summary["status"] == "completed" and summary["attack"] == "free_rider"
