"""The leaderboard's statistics on hand-made runs whose answers are computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from robustfl.leaderboard import cells, leaderboard, t_interval, tradeoff

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)


def runs(rows):
    frame = pd.DataFrame(rows, columns=["defense", "attack", "seed", "final_accuracy", "status"])
    for column, value in (("dataset", "d"), ("partition", "iid"), ("n", 10), ("f", 2)):
        frame[column] = value
    frame["partition_param"] = None
    return frame


def grid():
    rows = []
    table = {
        ("A", "none"): [0.90, 0.92, 0.94],
        ("A", "x"): [0.80, 0.70, 0.90],
        ("A", "y"): [0.60, 0.65, 0.70],
        ("B", "none"): [0.95, 0.95, 0.95],
        ("B", "x"): [0.50, 0.55, 0.60],
        ("B", "y"): [0.90, 0.90, 0.90],
    }
    for (defense, attack), values in table.items():
        rows += [(defense, attack, s, v, "completed") for s, v in enumerate(values)]
    return rows


def test_t_interval_by_hand():
    mean, low, high = t_interval([0.60, 0.65, 0.70])
    half = T_975_2 * 0.05 / math.sqrt(3)
    assert mean == pytest.approx(0.65)
    assert (low, high) == (pytest.approx(0.65 - half), pytest.approx(0.65 + half))
    assert math.isnan(t_interval([0.5])[1])


def test_leaderboard_ranks_by_worst_case_with_paired_gap():
    board = leaderboard(runs(grid())).set_index("defense")
    assert board.loc["A", "rank"] == 1 and board.loc["B", "rank"] == 2
    assert board.loc["A", "worst"] == pytest.approx(0.65)
    assert board.loc["A", "worst_attack"] == "y" and board.loc["B", "worst_attack"] == "x"
    half = T_975_2 * 0.05 / math.sqrt(3)
    assert board.loc["A", "worst_low"] == pytest.approx(0.65 - half)
    # per seed, the mean over attacks x and y: 0.7, 0.675, 0.8
    assert board.loc["A", "mean_attacked"] == pytest.approx((0.7 + 0.675 + 0.8) / 3)
    assert board.loc["A", "clean"] == pytest.approx(0.92)
    assert board.loc["A", "drop"] == pytest.approx(0.27)
    # B at its worst attack (x) trails A at its worst (y) by exactly 0.1 on every seed
    assert board.loc["B", "gap"] == pytest.approx(0.1)
    assert board.loc["B", "gap_low"] == pytest.approx(0.1)
    assert bool(board.loc["B", "behind"]) is True
    assert board.loc["B", "drop"] == pytest.approx(0.95 - 0.55)


def test_unpaired_noise_leaves_the_ranking_unsure():
    rows = grid()
    # C's worst case is as good as A's on average but swings from seed to seed
    rows += [("C", "x", s, v, "completed") for s, v in enumerate([0.45, 0.85, 0.70])]
    board = leaderboard(runs(rows)).set_index("defense")
    assert board.loc["C", "worst"] == pytest.approx(2.0 / 3.0)
    assert board.loc["C", "rank"] == 1
    a = board.loc["A"]
    # paired differences C - A at seeds 0..2: -0.15, 0.20, 0.00
    diffs = [0.45 - 0.60, 0.85 - 0.65, 0.70 - 0.70]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert a["gap"] == pytest.approx(mean)
    assert a["gap_low"] == pytest.approx(mean - T_975_2 * sd / math.sqrt(3))
    assert bool(a["behind"]) is False


def test_diverged_runs_score_zero_and_failed_runs_are_ignored():
    rows = grid()
    rows[3] = ("A", "x", 0, 0.80, "diverged")  # its last finite evaluation said 0.80
    rows.append(("A", "z", 0, None, "failed"))
    board = leaderboard(runs(rows)).set_index("defense")
    assert board.loc["A", "worst"] == pytest.approx((0.0 + 0.70 + 0.90) / 3)
    assert board.loc["A", "worst_attack"] == "x"
    assert "z" not in set(cells(runs(rows))["attack"])


def test_cells_have_spread_and_drop_from_the_clean_run():
    table = cells(runs(grid())).set_index(["defense", "attack"])
    assert table.loc[("A", "x"), "mean"] == pytest.approx(0.8)
    assert table.loc[("A", "x"), "std"] == pytest.approx(0.1)
    assert table.loc[("A", "x"), "seeds"] == 3
    assert table.loc[("A", "x"), "drop"] == pytest.approx(0.92 - 0.8)
    assert table.loc[("B", "none"), "drop"] == pytest.approx(0.0)


def test_settings_are_ranked_separately():
    rows = runs(grid())
    other = rows.copy()
    other["f"] = 4
    other.loc[other["defense"] == "B", "final_accuracy"] += 0.3  # B leads with f = 4
    board = leaderboard(pd.concat([rows, other]))
    leaders = board[board["rank"] == 1].set_index("f")["defense"].to_dict()
    assert leaders == {2: "A", 4: "B"}


def test_privacy_settings_are_ranked_apart_and_traded_off_against_epsilon():
    """Runs that differ in the privacy mechanism are separate settings; the trade-off table
    pairs each setting's worst case with its epsilon."""
    plain = runs(grid())
    plain["privacy"], plain["epsilon"] = "none", math.inf
    noisy = runs(grid())
    noisy["privacy"], noisy["epsilon"] = "local_dp(noise_multiplier=1.0)", 40.0
    noisy["final_accuracy"] -= 0.5  # noise costs 0.5 everywhere
    frame = pd.concat([plain, noisy])
    board = leaderboard(frame)
    assert len(board) == 4 and board.groupby("privacy")["rank"].max().tolist() == [2, 2]
    table = tradeoff(frame, board, "privacy", "epsilon").set_index(["defense", "privacy"])
    assert table.loc[("A", "none"), "worst"] == pytest.approx(0.65)  # A's worst: y
    assert table.loc[("A", "local_dp(noise_multiplier=1.0)"), "worst"] == pytest.approx(0.15)
    assert table.loc[("B", "local_dp(noise_multiplier=1.0)"), "epsilon"] == 40.0
    assert tradeoff(plain, leaderboard(plain), "privacy", "epsilon").empty  # nothing varies
