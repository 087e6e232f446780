import torch

from defenses.meamed import meamed
from robustfl.api import run_experiment


def test_meamed_hand_example():
    # Column [0, 1, 2, 10, 11]: median 2; the 3 closest values are 0, 1, 2 -> mean 1.
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert meamed(rows, f=2).tolist() == [1.0]


def test_meamed_ignores_nan_rows():
    rows = torch.tensor([[1.0], [2.0], [3.0], [float("nan")]])
    assert meamed(rows, f=1).tolist() == [2.0]


def test_meamed_runs_end_to_end(tmp_path):
    summary = run_experiment(["defense=meamed", "fl.rounds=3", "progress=false"], tmp_path)
    assert summary["status"] == "completed" and summary["defense"] == "meamed"
