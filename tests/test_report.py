"""robustfl-report: results.csv, figures and a self-contained report.html rendered in a real
headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import FAST
from omegaconf import OmegaConf

from robustfl.api import compose_config, run_experiment
from robustfl.report import main, worst_case, worst_case_grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sweep = root / "sweep"
    for i, (attack, defense, seed) in enumerate(
        [
            ("none", "mean", 0),
            ("none", "mean", 1),
            ("sign_flip", "mean", 0),
            ("sign_flip", "mean", 1),
            ("none", "median", 0),
            ("sign_flip", "median", 0),
            ("backdoor", "median", 0),
        ]
    ):
        run_experiment(
            [*FAST, f"attack={attack}", f"defense={defense}", f"seed={seed}"],
            sweep / f"{i}_{attack}-vs-{defense}-s{seed}",
        )
    single = root / "single"
    run_experiment([*FAST, "attack=sign_flip", "defense=krum"], single)
    # A killed run: metrics but no summary.
    killed = root / "killed"
    shutil.copytree(single, killed)
    (killed / "summary.json").unlink()
    (killed / ".hydra").mkdir()
    OmegaConf.save(
        compose_config([*FAST, "attack=sign_flip", "defense=krum"]),
        killed / ".hydra" / "config.yaml",
        resolve=True,
    )
    # A failed run.
    failed = sweep / "9_alie-vs-bulyan-s0"
    failed.mkdir()
    (failed / "summary.json").write_text(
        json.dumps(
            {
                "attack": "alie",
                "defense": "bulyan",
                "seed": 0,
                "status": "failed",
                "reason": "defense=bulyan needs n >= 4f + 3",
            }
        )
    )
    return root


def test_results_csv_has_one_row_per_run_with_status(runs, tmp_path, capsys):
    main([str(runs / "sweep"), str(runs / "single"), str(runs / "killed"), "-o", str(tmp_path)])
    assert "report:" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "results.csv")
    assert len(frame) == 10
    for column in (
        "attack",
        "defense",
        "dataset",
        "partition",
        "partition_param",
        "n",
        "f",
        "seed",
        "final_accuracy",
        "best_accuracy",
        "asr",
        "status",
        "run_dir",
    ):
        assert column in frame.columns
    assert frame["status"].value_counts().to_dict() == {
        "completed": 8,
        "unfinished": 1,
        "failed": 1,
    }
    unfinished = frame[frame["status"] == "unfinished"].iloc[0]
    assert unfinished["final_accuracy"] > 0  # read from its metrics.jsonl
    backdoor = frame[frame["attack"] == "backdoor"].iloc[0]
    assert 0 <= backdoor["asr"] <= 1
    for name in ("accuracy_heatmap.png", "asr_heatmap.png", "accuracy_curves.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 1000


def test_worst_case_ranks_defenses_by_their_lowest_mean_over_attacks():
    frame = pd.DataFrame(
        {
            "defense": ["a", "a", "a", "b", "b"],
            "attack": ["x", "x", "y", "x", "y"],
            "final_accuracy": [0.9, 0.7, 0.6, 0.5, 0.95],
        }
    )
    ranked = worst_case(frame)
    assert ranked["defense"].tolist() == ["a", "b"]
    assert ranked["worst_accuracy"].tolist() == [0.6, 0.5]
    assert ranked["worst_attack"].tolist() == ["y", "x"]


def test_worst_case_grid_is_the_lowest_best_accuracy_over_attacks_per_cell():
    rows = [  # (defense, f, gamma, attack, seed, best, status)
        ("tm", 1, 0.0, "a", 0, 0.9, "completed"),
        ("tm", 1, 0.0, "a", 1, 0.7, "completed"),  # mean over seeds 0.8
        ("tm", 1, 0.0, "b", 0, 0.85, "completed"),
        ("tm", 1, 1.0, "a", 0, 0.95, "completed"),
        ("tm", 1, 1.0, "b", 0, 0.10, "unfinished"),  # not ended: ignored
        ("tm", 4, 0.0, "b", 0, 0.30, "diverged"),
    ]
    frame = pd.DataFrame(
        rows,
        columns=["defense", "f", "partition_param", "attack", "seed", "best_accuracy", "status"],
    )
    grid = worst_case_grid(frame)
    cells = {(r.f, r.partition_param): (r.best_accuracy, r.worst_attack) for r in grid.itertuples()}
    assert cells[(1, 0.0)] == (pytest.approx(0.8), "a")
    assert cells[(1, 1.0)] == (0.95, "a")
    assert cells[(4, 0.0)] == (0.30, "b")


def test_report_is_self_contained(runs, tmp_path):
    main([str(runs / "sweep"), "-o", str(tmp_path)])
    page = (tmp_path / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page
    assert not re.search(r"src=\"(?!data:)", page)  # nothing loaded from elsewhere


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian package 'chromium'; .ci/run installs it)",
)
def test_report_renders_in_headless_chromium(runs, tmp_path):
    main([str(runs / "sweep"), "-o", str(tmp_path)])
    profile = tmp_path / "profile"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    total = re.search(r'data-images-total="(\d+)"', result.stdout)
    rendered = re.search(r'data-images-rendered="(\d+)"', result.stdout)
    assert total and rendered, result.stdout[:500]
    assert int(total.group(1)) >= 3
    assert rendered.group(1) == total.group(1)  # every embedded image decoded and laid out
