"""The Hydra Ray launcher (an optional extra, `pip install -e '.[ray]'`): a sweep on a local
Ray cluster gives the numbers of the basic launcher. Skipped where ray is not installed."""

from __future__ import annotations

import json

import pytest
from conftest import FAST, run_cli

pytest.importorskip("hydra_plugins.hydra_ray_launcher")


def finals(sweep) -> dict[str, float]:
    return {
        p.parent.name: json.loads(p.read_text())["final"]["accuracy"]
        for p in sweep.glob("*/summary.json")
    }


def test_ray_sweep_on_a_local_cluster_matches_the_basic_launcher(tmp_path):
    grid = [*FAST, "attack=none,alie", "defense=mean,median", "threads=1"]
    basic = run_cli("-m", *grid, f"hydra.sweep.dir={tmp_path}/basic", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr
    ray = run_cli(
        "-m",
        *grid,
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        f"hydra.sweep.dir={tmp_path}/ray",
        cwd=tmp_path,
        RAY_USAGE_STATS_ENABLED="0",
    )
    assert ray.returncode == 0, ray.stderr
    assert "sweep: 4 jobs: 4 completed, 0 diverged, 0 failed" in ray.stdout
    assert finals(tmp_path / "ray") == finals(tmp_path / "basic")
    assert len(finals(tmp_path / "ray")) == 4
