"""Validation of user input: one clear message naming the key, before any training."""

import json
import re

import pytest
from conftest import FAST, REPO, run_cli

from robustfl.api import compose_config, run_experiment
from robustfl.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fl.num_clients=0", "fl.num_clients=0 is invalid"),
        ("fl.rounds=-1", "fl.rounds=-1 is invalid"),
        ("fl.num_byzantine=10", "fl.num_byzantine=10 is invalid"),
        ("fl.clients_per_round=11", "fl.clients_per_round=11 is invalid"),
        ("fl.clients_per_round=0", "fl.clients_per_round=0 is invalid"),
        ("fl.lr=0", "fl.lr=0.0 is invalid"),
        ("fl.momentum=1.0", "fl.momentum=1.0 is invalid"),
        ("fl.dampening=1.5", "fl.dampening=1.5 is invalid"),
        ("fl.server_weight_decay=-1", "fl.server_weight_decay=-1.0 is invalid"),
        ("fl.batch_size=500", "fewer than fl.batch_size=500"),
        ("partition=dirichlet partition.alpha=0", "partition.alpha=0"),
        ("defense=krum fl.num_byzantine=4", "n > 2f + 2"),
        ("defense=bulyan", "n >= 4f + 3"),
        ("defense=trimmed_mean defense.b=5", "2b < n"),
        ("dataset=mnist dataset.root=/nonexistent", "/nonexistent"),
    ],
)
def test_invalid_values_are_rejected_before_training(tmp_path, override, message):
    with pytest.raises((ConfigError, FileNotFoundError), match=message.replace("+", r"\+")):
        run_experiment([*FAST, *override.split()], tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wrong_type_is_rejected_naming_the_key():
    with pytest.raises(Exception, match="fl.rounds"):
        compose_config(["fl.rounds=abc"])


def test_cli_runs_end_to_end_and_prints_one_result_line(tmp_path):
    result = run_cli(
        *FAST, "attack=alie", "defense=median", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("alie vs median (seed 0): accuracy")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["attack"] == "alie"
    assert (tmp_path / "r" / ".hydra" / "config.yaml").exists()


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    result = run_cli(*FAST, "fl.num_byzantine=20", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert result.returncode == 2
    assert "fl.num_byzantine=20 is invalid" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "num_byzantine" in summary["reason"]


def test_a_target_that_cannot_be_imported_is_one_friendly_line(tmp_path):
    result = run_cli(*FAST, "defense=median", "defense._target_=mypkg.rules.Nope", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("robustfl: error: _target_=mypkg.rules.Nope cannot be imported")
    assert "No module named 'mypkg'" in line and "PYTHONPATH" in line


def test_cli_wrong_type_and_unknown_option(tmp_path):
    result = run_cli("fl.rounds=abc", cwd=tmp_path)
    assert result.returncode != 0 and "fl.rounds" in result.stderr
    result = run_cli("attack=nope", cwd=tmp_path)
    assert result.returncode != 0 and "attack/nope" in result.stderr


@pytest.mark.parametrize("launcher", ["basic", "submitit_local", "joblib"])
def test_multirun_isolates_a_failing_job(tmp_path, launcher):
    result = run_cli(
        "-m",
        *FAST,
        "defense=median,bulyan",
        "pre=[nnm]",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path}/s",
        cwd=tmp_path,
    )
    assert result.returncode != 0  # the sweep reports its failure...
    # job folders name the defense behind its pre-aggregators
    folders = sorted(
        p.name for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name[0].isdigit()
    )
    assert folders == ["0_none-vs-nnm+median-s0", "1_none-vs-nnm+bulyan-s0"]
    statuses = sorted(
        json.loads(p.read_text())["status"] for p in (tmp_path / "s").glob("*/summary.json")
    )
    assert statuses == ["completed", "failed"]  # ...but the other job completed
    assert "1 completed, 0 diverged, 1 failed" in result.stdout
    if launcher != "submitit_local":  # submitit keeps each job's output in its own log
        progress = re.findall(
            r"sweep: (\d)/2 jobs done \((\d) completed, 0 diverged, (\d) failed\)", result.stdout
        )
        assert sorted(progress)[-1] == ("2", "1", "1")  # the last line counts both jobs


def test_config_tree_ships_as_package_data():
    """Hydra finds the tree through the robustfl.conf package, not the working directory: every
    group folder and option file must be reachable as package resources."""
    import importlib.resources

    conf = importlib.resources.files("robustfl.conf")
    for group in (
        "dataset",
        "partition",
        "model",
        "attack",
        "defense",
        "tracker",
        "experiment",
        "hydra/launcher",
    ):
        shipped = {p.name for p in (conf / group).iterdir() if p.name.endswith(".yaml")}
        in_repo = {p.name for p in (REPO / "conf" / group).glob("*.yaml")}
        assert shipped == in_repo and shipped, group
    cfg = compose_config(["dataset=synthetic", "model=cnn", "partition=shards"])
    assert cfg.dataset.name == "synthetic" and cfg.model.name == "cnn"


def test_optuna_preset_searches_the_attack_parameter(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run_cli(
        "-m",
        "experiment=strongest_attack",
        "hydra.sweeper.n_trials=3",
        "fl.rounds=4",
        f"hydra.sweep.dir={tmp_path}/s",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    epsilons = {
        line
        for p in (tmp_path / "s").glob("*/.hydra/overrides.yaml")
        for line in p.read_text().splitlines()
        if "attack.epsilon" in line
    }
    assert len(epsilons) == 3  # three trials, three different values
    assert "Best parameters" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("preset", "command_line", "total"),
    [
        (["experiment=grid"], [], 8 * 6 * 2 * 3),
        (["experiment=grid"], ["attack=none,alie", "seed=0"], 2 * 6 * 2),  # the command wins
        ([], ["attack=none,alie", "defense=mean,median,krum", "fl.rounds=3"], 6),
        (["experiment=strongest_attack"], [], None),
    ],
)
def test_sweep_size_counts_the_jobs_hydra_will_launch(preset, command_line, total):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from robustfl.callbacks import sweep_size
    from robustfl.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustfl.conf", version_base="1.3"):
        cfg = compose("config", overrides=preset, return_hydra_config=True)
    with open_dict(cfg):  # what `robustfl -m PRESET COMMAND_LINE` records
        cfg.hydra.overrides.task = [*preset, *command_line]
    if total is None:  # the Optuna preset: its trial budget
        assert sweep_size(cfg) == cfg.hydra.sweeper.n_trials
    else:
        assert sweep_size(cfg) == total
