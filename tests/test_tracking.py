"""W&B in offline mode, read back from its .wandb file; and the mode logic."""

from __future__ import annotations

import json

import pytest
from conftest import FAST as CONFTEST_FAST
from conftest import run_cli
from wandb_records import read_run

from robustfl.results import read_metrics
from robustfl.tracking import flatten, resolve_mode

FAST = [*CONFTEST_FAST, "tracker.mode=offline"]


def cli(args, cwd, **env):
    return run_cli(*args, cwd=cwd, clean_wandb_env=True, **env)


def wandb_file(run_dir):
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def test_offline_history_equals_metrics_jsonl(tmp_path):
    run_dir = tmp_path / "run"
    result = cli([*FAST, "attack=alie", "defense=median", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    logged = read_run(wandb_file(run_dir))
    history = [
        {k: v for k, v in row.items() if not k.startswith("_")}
        for row in logged["history"]
        if "round" in row
    ]
    expected = [{k: v for k, v in r.items() if v is not None} for r in read_metrics(run_dir)]
    assert history == expected
    assert logged["config"]["attack"] == "alie" and logged["config"]["defense"] == "median"
    assert logged["config"]["fl.num_clients"] == 10
    assert logged["name"] == "alie-vs-median-s0"
    assert {"attack:alie", "defense:median"} <= set(logged["tags"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert logged["summary"]["status"] == "completed"
    assert logged["summary"]["final.accuracy"] == summary["final"]["accuracy"]
    media = [row for row in logged["history"] if "round" not in row]
    assert any(key.startswith("metrics_table") for row in media for key in row)
    assert any(key.startswith("accuracy_curve") for row in media for key in row)
    assert logged["exit_code"] == 0
    # Nothing written outside the run folder.
    assert (run_dir / "wandb_files").is_dir()


def test_sweep_in_one_process_gives_each_job_its_own_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli(["-m", *FAST, "defense=mean,median", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    runs = [read_run(wandb_file(job)) for job in sorted(sweep.glob("*_*"))]
    assert [r["config"]["defense"] for r in runs] == ["mean", "median"]
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"] == sweep.name
    assert all(len([h for h in r["history"] if "round" in h]) == 2 for r in runs)


def test_failed_job_is_marked_failed_in_wandb(tmp_path):
    run_dir = tmp_path / "run"
    # The mimic victim is checked when the first round runs, after the W&B run started.
    result = cli([*FAST, "attack=mimic", "attack.victim=999", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    logged = read_run(wandb_file(run_dir))
    assert logged["exit_code"] == 1 and logged["summary"]["status"] == "failed"


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") is None  # the environment decides


def test_flatten():
    assert flatten({"fl": {"lr": 0.1, "x": {"y": 1}}, "seed": 0}) == {
        "fl.lr": 0.1,
        "fl.x.y": 1,
        "seed": 0,
    }


def test_disabled_mode_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = cli([*FAST[:-1], "tracker.mode=disabled", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "wandb").exists()


@pytest.mark.parametrize("value", ["offline"])
def test_environment_overrides_config(tmp_path, value):
    run_dir = tmp_path / "run"
    result = cli(
        [*FAST[:-1], "tracker.mode=disabled", f"hydra.run.dir={run_dir}"],
        tmp_path,
        WANDB_MODE=value,
    )
    assert result.returncode == 0, result.stderr
    assert wandb_file(run_dir).exists()
