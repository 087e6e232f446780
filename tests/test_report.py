"""robustfl-report: results.csv, the leaderboard and one self-contained report.html, used in a
real headless browser."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
from conftest import FAST
from omegaconf import OmegaConf

from robustfl.api import compose_config, run_experiment
from robustfl.leaderboard import worst_case_grid
from robustfl.report import main
from robustfl.runs import collect


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
    out = capsys.readouterr().out
    assert "report:" in out
    ranking = out[out.index("ranking (") :]
    assert ranking.index(" 1. ") < ranking.index(" 2. ")  # the printed ranking, best first
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
        "worst_robustness_error",
        "byzantine_selected_share",
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
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    # mean and median ran under sign flipping; krum's single run too (another seed set)
    assert set(board["defense"]) == {"mean", "median", "krum"}
    median = board.set_index("defense").loc["median"]
    assert median["worst_attack"] in ("sign_flip", "backdoor")
    cells = pd.read_csv(tmp_path / "cells.csv")
    mean_clean = cells[(cells["defense"] == "mean") & (cells["attack"] == "none")].iloc[0]
    assert mean_clean["seeds"] == 2 and mean_clean["drop"] == 0


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


def test_report_loads_nothing_from_elsewhere(runs, tmp_path):
    main([str(runs / "sweep"), "-o", str(tmp_path)])
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc=", page)  # every script inline
    assert not re.search(r"<link[^>]*\shref=\"?https?:", page)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - a dev dependency
    sync_playwright = None


@pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs chromium (Debian package 'chromium'; .ci/run installs it) and playwright "
    "(the dev extra)",
)
def test_report_works_offline_in_headless_chromium(runs, tmp_path):
    """No console error, no request leaves the file; the tables sort and filter, hovering a
    heatmap cell shows its spread, a legend click hides a defense."""
    main([str(runs / "sweep"), "-o", str(tmp_path)])
    url = (tmp_path / "report.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems, requests = [], []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request", lambda r: r.url.startswith(("http:", "https:")) and requests.append(r.url)
        )
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('table.dataTable').length >= 2")
        assert problems == [] and requests == []

        rows = "#runs tbody tr"
        assert page.locator(rows).count() == 8  # 7 runs and the failed one
        accuracy = list(pd.read_csv(tmp_path / "results.csv").columns).index("final_accuracy")

        def column():
            cells = page.eval_on_selector_all(
                f"{rows} td:nth-child({accuracy + 1})", "cells => cells.map(c => c.textContent)"
            )
            return [float(c) for c in cells if c.strip() not in ("", "NaN")]

        sorter = page.locator("#runs thead th .dt-column-order").nth(accuracy)
        sorter.click()
        page.wait_for_timeout(300)
        assert column() == sorted(column())
        sorter.click()
        page.wait_for_timeout(300)
        assert column() == sorted(column(), reverse=True)
        search = page.locator(".dt-container", has=page.locator("#runs")).locator("input")
        search.first.fill("median")
        page.wait_for_timeout(200)
        assert page.locator(rows).count() == 3

        heat = page.locator("[id^=accuracy_heatmap] .nsewdrag").first
        heat.scroll_into_view_if_needed()
        box = heat.bounding_box()
        heat.hover(position={"x": box["width"] * 0.25, "y": box["height"] * 0.25})
        page.wait_for_selector("[id^=accuracy_heatmap] .hovertext")
        assert "std" in page.locator("[id^=accuracy_heatmap] .hovertext").first.text_content()

        curves = "document.querySelector('[id^=accuracy_curves]').data"
        assert "legendonly" not in page.evaluate(f"{curves}.map(t => t.visible)")
        toggle = page.locator("[id^=accuracy_curves] .legendtoggle").first
        toggle.scroll_into_view_if_needed()
        toggle.click()
        page.wait_for_function(f"{curves}.some(t => t.visible === 'legendonly')", timeout=5000)
        assert problems == [] and requests == []
        browser.close()


def test_privacy_and_compression_appear_beside_accuracy(tmp_path):
    """Runs that differ only in the noise are two settings, with epsilon and bits per client in
    results.csv and a trade-off table and figure in the page."""
    for sigma in (0.5, 2.0):
        for attack in ("none", "sign_flip"):
            run_experiment(
                [
                    *FAST,
                    f"attack={attack}",
                    "privacy=local",
                    f"privacy.noise_multiplier={sigma}",
                    "compression=qsgd",
                ],
                tmp_path / "runs" / f"{attack}_{sigma}",
            )
    main([str(tmp_path / "runs"), "-o", str(tmp_path / "out")])
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert frame["privacy"].nunique() == 2 and frame["compression"].str.startswith("qsgd").all()
    assert (frame.groupby("privacy")["epsilon"].nunique() == 1).all()
    assert frame["bits_per_client"].nunique() == 1 and frame["bits_per_client"].iloc[0] > 0
    table = pd.read_csv(tmp_path / "out" / "privacy_tradeoff.csv")
    assert len(table) == 2  # one defense in two privacy settings
    eps = table.set_index("privacy")["epsilon"]
    assert eps[eps.index.str.contains("noise_multiplier=0.5")].iloc[0] > eps.min()  # less noise
    page = (tmp_path / "out" / "report.html").read_text()
    assert "privacy_tradeoff" in page and "Worst case over attacks against epsilon" in page
    assert not (tmp_path / "out" / "compression_tradeoff.csv").exists()  # one compressor


def test_bad_folders_are_listed_left_out_and_the_rest_is_written(runs, tmp_path, capsys):
    """A summary.json cut short and a completed summary without a finite final accuracy:
    both listed with their reason, neither counted, every file still written."""
    root = tmp_path / "runs"
    shutil.copytree(runs / "sweep", root)
    cut = root / "0_none-vs-mean-s0" / "summary.json"
    cut.write_text(cut.read_text()[:40])
    nan = root / "1_none-vs-mean-s1" / "summary.json"
    summary = json.loads(nan.read_text())
    summary["final"]["accuracy"] = float("nan")
    nan.write_text(json.dumps(summary))  # the literal NaN
    partial = root / "2_sign_flip-vs-mean-s0"
    with open(partial / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 9, "accur')  # a last line cut short: tolerated
    hostile = root / "3_sign_flip-vs-mean-s1" / "summary.json"
    summary = json.loads(hostile.read_text())
    summary["defense"] = "<img src=x onerror=alert(1)>"
    hostile.write_text(json.dumps(summary))
    main([str(root), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "2 folders left out" in out
    problems = pd.read_csv(tmp_path / "out" / "problems.csv").set_index("run_dir")
    assert "not valid JSON" in problems.loc[str(cut.parent), "problem"]
    assert "final accuracy is nan" in problems.loc[str(nan.parent), "problem"]
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert str(cut.parent) not in set(frame["run_dir"]) and len(frame) == 6
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert cells[(cells["defense"] == "mean") & (cells["attack"] == "none")].empty
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Folders left out (2)" in page
    assert str(partial) in set(frame["run_dir"])
    assert "<img src=x" not in page  # labels are data, escaped wherever the page shows them


def test_a_label_shared_by_two_rules_is_split_with_a_warning(runs, tmp_path):
    """A trimmed mean whose YAML kept name: median must not be pooled with the median."""
    root = tmp_path / "runs"
    shutil.copytree(runs / "sweep", root)
    run_experiment(
        [*FAST, "attack=sign_flip", "defense=trimmed_mean", "defense.name=median", "seed=0"],
        root / "impostor",
    )
    collected = collect([root])
    labels = set(collected.frame["defense"])
    split = sorted(label for label in labels if label.startswith("median ["))
    assert len(split) == 2 and "median" not in labels
    assert len(collected.warnings) == 1 and all(s in collected.warnings[0] for s in split)
    impostor = collected.frame[collected.frame["run_dir"] == str(root / "impostor")]
    assert impostor["defense"].iloc[0] in split


def test_the_printed_ranking_counts_the_backdoor_and_coverage(runs, tmp_path, capsys):
    main([str(runs / "sweep"), "-o", str(tmp_path)])
    ranking = capsys.readouterr().out
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("defense")
    # median faced sign flipping and the backdoor; mean only sign flipping
    assert board.loc["mean", "missing_attacks"] == "backdoor"
    assert "MISSING backdoor" in ranking and "worst ASR" in ranking
    assert board.loc["median", "rank"] == 1 and bool(board.loc["median", "leader"])
    median = pd.read_csv(tmp_path / "results.csv").query("defense == 'median'")
    backdoor = median[median["attack"] == "backdoor"].iloc[0]
    robust = min(backdoor["final_accuracy"], 1 - backdoor["asr"])
    sign_flip = median[median["attack"] == "sign_flip"]["final_accuracy"].mean()
    assert board.loc["median", "worst"] == pytest.approx(min(robust, sign_flip))
    clean = median[median["attack"] == "none"].iloc[0]
    assert 0 <= clean["trigger_rate"] <= 1  # the clean model's trigger rate, for reference


def test_two_runs_of_one_seed_are_flagged_not_silently_pooled(runs, tmp_path, capsys):
    """A rerun of sign flipping vs mean, seed 0, with other rounds in a second folder: the
    cell averages both as one seed, and the report says so (stderr and page)."""
    root = tmp_path / "runs"
    shutil.copytree(runs / "sweep", root)
    run_experiment(
        [*FAST, "attack=sign_flip", "defense=mean", "seed=0", "fl.rounds=2"], root / "rerun"
    )
    collected = collect([root])
    repeated = [w for w in collected.warnings if "averaged as one seed" in w]
    assert len(repeated) == 1 and "sign_flip vs mean, seed 0" in repeated[0]
    assert str(root / "rerun") in repeated[0]
    main([str(root), "-o", str(tmp_path / "out")])
    assert "warning: 2 runs of sign_flip vs mean, seed 0" in capsys.readouterr().err
    assert "averaged as one seed" in (tmp_path / "out" / "report.html").read_text()
    assert not [w for w in collect([runs / "sweep"]).warnings if "averaged" in w]
