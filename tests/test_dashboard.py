"""The W&B workspace spec, built offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("wandb_workspaces")

from robustfl.dashboard import build_workspace


def test_workspace_groups_by_attack_and_defense_and_has_the_panels():
    workspace = build_workspace("team", "robustfl")
    assert (workspace.entity, workspace.project) == ("team", "robustfl")
    spec = json.loads(workspace._to_model().model_dump_json())
    text = json.dumps(spec)
    assert "attack" in text and "defense" in text
    sections = {s.name: s for s in workspace.sections}
    bars = sections["Final accuracy per defense, under each attack"].panels[0]
    assert type(bars).__name__ == "BarPlot"
    assert [str(getattr(m, "name", m)) for m in bars.metrics] == ["final.accuracy"]
    curves = sections["Accuracy per round"].panels[0]
    assert curves.y == ["accuracy"] and curves.x == "round"
    assert any(
        getattr(p, "y", None) == ["asr"] for p in sections["Backdoor: attack success rate"].panels
    )
    groups = [g.key if hasattr(g, "key") else str(g) for g in workspace.runset_settings.groupby]
    assert any("attack" in str(g) for g in groups) and any("defense" in str(g) for g in groups)


def test_saving_without_an_api_key_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"))
    result = subprocess.run(
        [sys.executable, "-m", "robustfl.dashboard", "--project", "p"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "needs a W&B API key" in result.stderr and "wandb login" in result.stderr


def test_workspace_plots_accuracy_against_epsilon_and_bits(tmp_path):
    """The scatter plots read summary keys that a run with privacy and compression writes to
    W&B (its summary, flattened as the tracker does)."""
    from conftest import FAST

    from robustfl.api import run_experiment
    from robustfl.tracking import flatten

    summary = run_experiment([*FAST, "privacy=local", "compression=sign"], tmp_path)
    logged = flatten(summary)
    sections = {s.name: s for s in build_workspace("team", "robustfl").sections}
    panels = sections["Privacy and compression"].panels
    xs = [str(getattr(p.x, "name", p.x)) for p in panels if type(p).__name__ == "ScatterPlot"]
    assert xs == ["privacy_mechanism.epsilon", "compression_scheme.bits_per_message"]
    assert all(isinstance(logged[x], float | int) for x in [*xs, "final.accuracy"])
    assert any(getattr(p, "y", None) == ["epsilon"] for p in panels)
