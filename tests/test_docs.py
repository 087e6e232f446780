"""The how-tos do exactly what they say: their file blocks are the repository's files, and the
user-package recipe runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BLOCK = re.compile(r"<!-- (file: (?P<path>\S+)|run) -->\n```\w*\n(?P<body>.*?)```", re.S)


def blocks(doc: str) -> list[tuple[str | None, str]]:
    text = (REPO / "docs" / doc).read_text()
    return [(m.group("path"), m.group("body")) for m in BLOCK.finditer(text)]


@pytest.mark.parametrize("doc", ["adding-an-attack.md", "adding-a-defense.md"])
def test_doc_blocks_are_the_repository_files(doc):
    in_repo = [(p, body) for p, body in blocks(doc) if p and (REPO / p).exists()]
    assert len(in_repo) >= 3
    for path, body in in_repo:
        assert (REPO / path).read_text() == body, f"{doc} and {path} differ"


def write_user_files(doc: str, root: Path) -> list[str]:
    """Write the doc's file blocks that are not repository files under ``root``; return the
    lines of its last run block."""
    commands: list[str] = []
    for path, body in blocks(doc):
        if path is None:
            commands = [line for line in body.strip().splitlines() if line]
        elif not (REPO / path).exists():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(body)
    return commands


def run_user_command(command: str, cwd: Path, **env: str) -> str:
    """``command`` in bash with the venv's commands on the PATH and W&B off; its stdout."""
    bin_dir = Path(sys.executable).parent
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "WANDB_MODE": "disabled",
        **env,
    }
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_attack_from_a_users_own_package_through_searchpath(tmp_path):
    commands = write_user_files("adding-an-attack.md", tmp_path)
    assert commands == [
        "PYTHONPATH=. robustfl attack=silence fl.rounds=3 'hydra.searchpath=[file://my_conf]'"
    ]
    out = run_user_command(f"{commands[0]} progress=false hydra.run.dir=out", tmp_path)
    assert "silence vs mean (seed 0): accuracy" in out


def test_defense_from_an_installed_package_through_a_hydra_plugin(tmp_path):
    """The package of adding-a-defense.md, installed into a folder of its own (not the venv),
    found through its hydra_plugins module: one run and a preset sweep with its own list."""
    commands = write_user_files("adding-a-defense.md", tmp_path)
    for package in ("robustfl_mine", "robustfl_mine/conf", "hydra_plugins/robustfl_mine"):
        (tmp_path / "mine" / package / "__init__.py").touch()
    assert commands[0] == "pip install ./mine" and len(commands) == 3
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
    install = subprocess.run(
        [*pip, "--target", str(site), str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert not (site / "hydra_plugins" / "__init__.py").exists()  # the shared namespace
    # PYTHONPATH: where the package was installed, as site-packages would be
    one = run_user_command(
        f"{commands[1]} progress=false hydra.run.dir=one", tmp_path, PYTHONPATH=str(site)
    )
    assert "alie vs midrange (seed 0): accuracy" in one
    sweep = run_user_command(
        f"{commands[2]} progress=false hydra.sweep.dir=sweep", tmp_path, PYTHONPATH=str(site)
    )
    assert "2 jobs: 2 completed" in sweep
