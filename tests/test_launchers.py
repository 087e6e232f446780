"""The SLURM preset, down to the sbatch script submitit writes for a sweep."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from robustfl.config import register_configs

submitit = pytest.importorskip("submitit")
launcher_config = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")


def sbatch_script(overrides: list[str], jobs: int, tmp_path, monkeypatch) -> tuple[str, dict]:
    """The sbatch text submitit would submit for ``jobs`` jobs, with the launcher parameters
    mapped to submitit's as hydra-submitit-launcher maps them; a stand-in ``srun`` on PATH
    lets submitit's SLURM executor start off a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustfl.conf", version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True
        )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    launcher = {
        k: params.pop(k) for k in ("submitit_folder", "_target_", "name", "max_num_timeout")
    }
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    base = set(OmegaConf.structured(launcher_config.BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = _make_sbatch_string(
        command="python -u job.py",
        folder=tmp_path / "logs",
        map_count=jobs,
        **executor._executor.parameters,
    )
    return text, launcher


def test_slurm_preset_composes_to_an_array_job(tmp_path, monkeypatch):
    text, launcher = sbatch_script(
        [
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=1",
            "hydra.launcher.timeout_min=30",
            "hydra.launcher.account=myproject",
        ],
        jobs=252,
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=30",
        "#SBATCH --account=myproject",
        "#SBATCH --array=0-251%64",  # one array, at most array_parallelism jobs at once
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --signal=USR2@120",  # the warning before preemption or the time limit
    ):
        assert line in text, line
    assert launcher["max_num_timeout"] == 3  # requeues; resume=true continues the run
    assert launcher["submitit_folder"].startswith("${hydra.sweep.dir}/.submitit")
