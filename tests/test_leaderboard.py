"""The leaderboard's statistics on hand-made runs whose answers are computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from robustfl.leaderboard import cells, leaderboard, t_interval, tradeoff

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)


def runs(rows):
    columns = ["defense", "attack", "seed", "final_accuracy", "status", "asr"]
    frame = pd.DataFrame([(*row, None)[:6] for row in rows], columns=columns)
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
    rows += [("C", "y", s, 0.95, "completed") for s in range(3)]
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


def test_a_defense_that_missed_attacks_is_flagged_and_never_the_leader():
    """C faced only x, where it beats everyone: its 'worst case' is over fewer attacks, so it
    ranks after A and B, names the attack it missed, and A stays the leader."""
    rows = grid() + [("C", "x", s, 0.99, "completed") for s in range(3)]
    board = leaderboard(runs(rows)).set_index("defense")
    assert board.loc["C", "worst"] == pytest.approx(0.99)
    assert board.loc["C", "missing_attacks"] == "y" and board.loc["C", "rank"] == 3
    assert board.loc["A", "missing_attacks"] == "" and bool(board.loc["A", "leader"])
    assert not bool(board.loc["C", "leader"])


def test_a_targeted_attacks_success_counts_in_the_score():
    """Under the backdoor, A keeps 0.9 accuracy but the backdoor succeeds 80% of the time;
    B loses some accuracy (0.7) and stops it (ASR 0.05). Robust scores: A min(0.9, 0.2) = 0.2,
    B min(0.7, 0.95) = 0.7, so B leads; by accuracy alone A leads; by ASR alone B leads."""
    rows = []
    for s in range(3):
        rows += [("A", "none", s, 0.95, "completed"), ("B", "none", s, 0.9, "completed")]
        rows += [("A", "backdoor", s, 0.9, "completed", 0.8)]
        rows += [("B", "backdoor", s, 0.7, "completed", 0.05)]
    frame = runs(rows)
    robust = leaderboard(frame).set_index("defense")
    assert robust.loc["A", "worst"] == pytest.approx(0.2)
    assert robust.loc["B", "worst"] == pytest.approx(0.7) and robust.loc["B", "rank"] == 1
    assert robust.loc["A", "worst_asr"] == pytest.approx(0.8)
    assert robust.loc["A", "worst_asr_attack"] == "backdoor"
    accuracy = leaderboard(frame, rank_by="accuracy").set_index("defense")
    assert accuracy.loc["A", "rank"] == 1 and accuracy.loc["A", "worst"] == pytest.approx(0.9)
    asr_view = leaderboard(frame, rank_by="asr").set_index("defense")
    assert asr_view.loc["B", "rank"] == 1 and asr_view.loc["B", "worst"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="rank_by"):
        leaderboard(frame, rank_by="best")


def test_intervals_stay_inside_the_metrics_range_and_few_seeds_are_flagged():
    """Two seeds at 0.0 and 1.0: mean 0.5, half-width 12.7 * 0.707 / 1.414 = 6.35, so the
    plain interval would be [-5.85, 6.85]; it is clipped to [0, 1] and marked few_seeds."""
    assert t_interval([0.0, 1.0], bounds=(0.0, 1.0)) == (0.5, 0.0, 1.0)
    rows = [("A", "none", s, 0.9, "completed") for s in range(2)]
    rows += [("A", "x", s, v, "completed") for s, v in enumerate([0.0, 1.0])]
    board = leaderboard(runs(rows)).set_index("defense")
    assert (board.loc["A", "worst_low"], board.loc["A", "worst_high"]) == (0.0, 1.0)
    assert bool(board.loc["A", "few_seeds"])
    table = cells(runs(rows)).set_index("attack")
    assert table.loc["x", "low"] == 0.0 and table.loc["x", "high"] == 1.0
