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
