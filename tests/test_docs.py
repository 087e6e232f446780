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


def test_attack_from_a_users_own_package_through_searchpath(tmp_path):
    commands = []
    for path, body in blocks("adding-an-attack.md"):
        if path is None:
            commands.append(body.strip())
        elif not (REPO / path).exists():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(body)
    assert commands == [
        "PYTHONPATH=. robustfl attack=silence fl.rounds=3 'hydra.searchpath=[file://my_conf]'"
    ]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        ["bash", "-c", f"{commands[0]} progress=false hydra.run.dir=out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "silence vs mean (seed 0): accuracy" in result.stdout


def test_defense_from_an_installed_package_through_a_hydra_plugin(tmp_path):
    """The package of adding-a-defense.md, installed into a folder of its own (not the venv),
    found through its hydra_plugins module: one run and a preset sweep with its own list."""
    commands = []
    for path, body in blocks("adding-a-defense.md"):
        if path is None:
            commands = [line for line in body.strip().splitlines() if line]
        elif not (REPO / path).exists():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(body)
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
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(site),  # where the package was installed, as site-packages would be
        "WANDB_MODE": "disabled",
    }
    outputs = []
    for command, where in zip(
        commands[1:], ("hydra.run.dir=one", "hydra.sweep.dir=sweep"), strict=True
    ):
        result = subprocess.run(
            ["bash", "-c", f"{command} progress=false {where}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "alie vs midrange (seed 0): accuracy" in outputs[0]
    assert "2 jobs: 2 completed" in outputs[1]
