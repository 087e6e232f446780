"""Checkpoints: a killed run resumes to the metrics of an uninterrupted one; a re-launched
sweep skips finished runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAST, Stop, StopAfter

from robustfl.api import run_experiment
from robustfl.checkpoint import load_checkpoint
from robustfl.results import read_metrics

# Stateful pieces on purpose: client and server momentum, centered clipping's center,
# mimic's direction, client sampling. One torch thread everywhere: the reference runs in this
# process and the others in subprocesses, and float sums depend on the thread count.
OVERRIDES = [
    "fl.num_clients=10",
    "fl.num_byzantine=2",
    "fl.clients_per_round=8",
    "fl.momentum=0.9",
    "fl.server_momentum=0.5",
    "attack=mimic",
    "defense=centered_clipping",
    "fl.eval_every=1",
    "progress=false",
    "threads=1",
]


def numbers(run_dir):
    return [
        {k: v for k, v in r.items() if not k.startswith(("time_", "elapsed"))}
        for r in read_metrics(run_dir)
    ]


def test_checkpoint_is_safe_to_load_and_complete(tmp_path):
    run_experiment([*OVERRIDES, "fl.rounds=3"], tmp_path)
    saved = load_checkpoint(tmp_path)  # torch.load(weights_only=True) inside
    assert saved["run"]["next_round"] == 3
    assert set(saved["streams"]) >= {"sampling", "batches", "attack", "defense"}
    assert isinstance(saved["defense"]["center"], torch.Tensor)
    assert saved["client_momentum"].shape[0] == 10


def test_resume_after_sigkill_gives_identical_metrics(tmp_path):
    """Under the default policy (a checkpoint by time, here every 0.05 s so that the kill
    lands after several), a run killed mid-way resumes to an uninterrupted run's metrics."""
    rounds = 300
    reference = tmp_path / "reference"
    run_experiment([*OVERRIDES, f"fl.rounds={rounds}"], reference)

    killed = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "robustfl",
        *OVERRIDES,
        f"fl.rounds={rounds}",
        "checkpoint_seconds=0.05",
        f"hydra.run.dir={killed}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(killed)) < 20:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    done_before = len(read_metrics(killed))
    assert 0 < done_before < rounds
    assert 0 < load_checkpoint(killed)["run"]["next_round"] < rounds  # resumes mid-way

    result = subprocess.run(
        [*args, "resume=true"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert numbers(killed) == numbers(reference)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == rounds


def test_checkpoints_follow_the_policy(tmp_path):
    """By time with a period longer than the run: only the final checkpoint (round 3);
    neither by time nor by rounds: no file."""
    run_experiment([*OVERRIDES, "fl.rounds=3", "checkpoint_seconds=3600"], tmp_path / "time")
    assert load_checkpoint(tmp_path / "time")["run"]["next_round"] == 3
    run_experiment(
        [*OVERRIDES, "fl.rounds=3", "checkpoint_every=0", "checkpoint_seconds=0"],
        tmp_path / "none",
    )
    assert load_checkpoint(tmp_path / "none") is None


def test_relaunched_sweep_skips_finished_runs_and_resumes_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    args = [
        sys.executable,
        "-m",
        "robustfl",
        "-m",
        "fl.num_clients=10",
        "fl.num_byzantine=2",
        "fl.rounds=4",
        "progress=false",
        "defense=mean,median,krum",
        "resume=true",
        f"hydra.sweep.dir={sweep}",
    ]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # Forget that one job finished: it must be the only one that runs again.
    unfinished = next(sweep.glob("1_*"))
    (unfinished / "summary.json").unlink()
    before = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")}
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("(already finished: skipped)") == 2
    after = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")}
    rerun = {name for name in before if before[name] != after[name]}
    assert rerun == {unfinished.name}
    assert json.loads((unfinished / "summary.json").read_text())["status"] == "completed"


def test_dropout_runs_are_seeded_and_resume_identically(tmp_path):
    """Karimireddy et al.'s CNN (on the 8 x 8 digits) with dropout: the masks come from the
    run's "dropout" stream, checkpointed with the others."""
    overrides = [*FAST, "model=karimireddy_cnn", "fl.rounds=6", "fl.eval_every=1", "threads=1"]
    overrides += ["checkpoint_every=1"]  # a checkpoint by round 3, when the tracker stops it
    run_experiment(overrides, tmp_path / "reference")
    with pytest.raises(Stop):
        run_experiment(overrides, tmp_path / "killed", tracker=StopAfter(3))
    assert "dropout" in load_checkpoint(tmp_path / "killed")["streams"]
    run_experiment([*overrides, "resume=true"], tmp_path / "killed")
    assert numbers(tmp_path / "killed") == numbers(tmp_path / "reference")
    run_experiment([*overrides, "model.dropout=false"], tmp_path / "without")
    assert numbers(tmp_path / "without") != numbers(tmp_path / "reference")
