"""Which defense to use, and how sure that is: statistics over a table of runs.

Runs are paired: with the same seed, runs see the same data partition and the same Byzantine
clients whatever the defense and the attack (both are drawn from the seed alone), so the
difference between two defenses is measured seed by seed, and its spread over seeds gives
the interval. Intervals are two-sided Student-t intervals of a mean over seeds.

A *setting* is what the runs being compared share: data set, partition (and its parameter),
``n``, ``f``, the privacy mechanism and the compression (with their parameters); every table
here is computed per setting. A diverged run (its model became
non-finite) scores 0: a defense that lets the model blow up is not rescued by its last finite
evaluation.

Input frames have one row per run (as :func:`robustfl.report.collect` builds them): the
columns of :data:`SETTING`, ``defense``, ``attack``, ``seed``, ``status`` and the value
compared, ``final_accuracy`` by default.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SETTING = ["dataset", "partition", "partition_param", "n", "f", "privacy", "compression"]
CLEAN_ATTACK = "none"


def t_interval(values: np.ndarray | pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and the two-sided ``level`` Student-t interval of
    that mean: ``mean -+ t_{(1+level)/2, m-1} * sd / sqrt(m)`` with the sample sd (``ddof=1``);
    ``(mean, nan, nan)`` for fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def fill_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose :data:`SETTING` columns hold ``"-"`` where they are missing or
    empty, so that grouping by setting keeps every row."""
    filled = frame.copy()
    for column in SETTING:
        filled[column] = filled[column].astype(object).fillna("-") if column in filled else "-"
    return filled


def scored(frame: pd.DataFrame, value: str = "final_accuracy") -> pd.DataFrame:
    """The ended runs (completed or diverged) with ``value`` in column ``score``; a diverged
    run scores 0. Missing setting columns are filled with ``"-"`` so that groups stay whole."""
    ended = fill_settings(frame[frame["status"].isin(["completed", "diverged"])])
    ended["score"] = ended[value].astype(float)
    ended.loc[ended["status"] == "diverged", "score"] = 0.0
    return ended.dropna(subset=["score"])


def cells(frame: pd.DataFrame, value: str = "final_accuracy") -> pd.DataFrame:
    """One row per (setting, attack, defense): ``mean``, ``std`` (over seeds, ``ddof=1``),
    ``low``/``high`` (95% interval), ``seeds``, and ``drop``: the defense's clean mean minus
    this mean (NaN without a clean run)."""
    runs = scored(frame, value)
    keys = [*SETTING, "attack", "defense"]
    rows = []
    for key, part in runs.groupby(keys, sort=True):
        per_seed = part.groupby("seed")["score"].mean()
        mean, low, high = t_interval(per_seed)
        std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
        rows.append(
            dict(
                zip(keys, key, strict=True),
                mean=mean,
                std=std,
                low=low,
                high=high,
                seeds=len(per_seed),
            )
        )
    table = pd.DataFrame(rows, columns=[*keys, "mean", "std", "low", "high", "seeds"])
    clean = table[table["attack"] == CLEAN_ATTACK].set_index([*SETTING, "defense"])["mean"]
    index = pd.MultiIndex.from_frame(table[[*SETTING, "defense"]])
    table["drop"] = clean.reindex(index).to_numpy() - table["mean"].to_numpy()
    return table


def _rank_key(row: dict) -> tuple[float, float]:
    """Best worst case first; defenses with only clean runs last, by clean accuracy."""
    worst, clean = row.get("worst", math.nan), row.get("clean", math.nan)
    return (-worst if not math.isnan(worst) else math.inf, -clean if not math.isnan(clean) else 0)


def leaderboard(frame: pd.DataFrame, value: str = "final_accuracy") -> pd.DataFrame:
    """One row per (setting, defense), ranked within each setting by ``worst`` (best first).

    Columns:
        worst, worst_attack, worst_low, worst_high: the lowest, over attacks other than
            ``none``, of the mean over seeds, the attack that reaches it, and the 95% interval
            of that mean.
        mean_attacked, mean_low, mean_high: the mean over those attacks, per seed, then over
            seeds (seeds that ran every attack), with its interval.
        clean, drop: the mean over seeds without attack, and ``clean - worst``.
        gap, gap_low, gap_high: the leader's worst case minus this defense's, paired by seed
            (each at its own worst attack), with the interval of the paired differences;
            ``behind`` is true when that interval lies above 0.
        seeds, rank.
    """
    runs = scored(frame, value)
    rows = []
    for setting, part in runs.groupby(SETTING, sort=True):
        attacked = part[part["attack"] != CLEAN_ATTACK]
        per_seed = attacked.pivot_table(
            index="seed", columns=["defense", "attack"], values="score", aggfunc="mean"
        )
        board = []
        for defense, own in part.groupby("defense"):
            row = dict(zip(SETTING, setting, strict=True), defense=defense)
            row["clean"] = own.loc[own["attack"] == CLEAN_ATTACK, "score"].mean()
            row["seeds"] = own["seed"].nunique()
            row["worst_series"] = None
            if defense in per_seed.columns.get_level_values(0):
                table = per_seed[defense]
                means = table.mean()
                attack = str(means.idxmin())
                row["worst"], row["worst_attack"] = float(means.min()), attack
                _, row["worst_low"], row["worst_high"] = t_interval(table[attack])
                complete = table.dropna()
                row["mean_attacked"], row["mean_low"], row["mean_high"] = t_interval(
                    complete.mean(axis=1)
                )
                row["worst_series"] = table[attack]
            board.append(row)
        board.sort(key=_rank_key)
        leader = board[0].get("worst_series") if board else None
        for rank, row in enumerate(board, start=1):
            row["rank"] = rank
            series = row.pop("worst_series")
            if leader is not None and series is not None:
                paired = (leader - series).dropna()
                row["gap"], row["gap_low"], row["gap_high"] = t_interval(paired)
                row["behind"] = bool(row["gap_low"] > 0)
            rows.append(row)
    columns = [
        *SETTING,
        "rank",
        "defense",
        "worst",
        "worst_low",
        "worst_high",
        "worst_attack",
        "mean_attacked",
        "mean_low",
        "mean_high",
        "clean",
        "drop",
        "gap",
        "gap_low",
        "gap_high",
        "behind",
        "seeds",
    ]
    board = pd.DataFrame(rows).reindex(columns=columns)
    board["drop"] = board["clean"] - board["worst"]
    return board.reset_index(drop=True)


def tradeoff(frame: pd.DataFrame, board: pd.DataFrame, channel: str, measure: str) -> pd.DataFrame:
    """Each defense's worst case and mean over attacks against what ``channel`` (``"privacy"``
    or ``"compression"``) costs, ``measure`` (``"epsilon"`` or ``"bits_per_client"``, the mean
    over the setting's runs): one row per :func:`leaderboard` row whose setting shares all but
    ``channel`` with at least one other setting. Empty when ``channel`` never varies."""
    keyed = fill_settings(frame)
    if measure not in keyed:
        return pd.DataFrame()
    rest = [column for column in SETTING if column != channel]
    varied = keyed.groupby(rest)[channel].transform("nunique") > 1
    if not varied.any():
        return pd.DataFrame()
    cost = keyed[varied].groupby(SETTING, as_index=False)[measure].mean()
    columns = ["defense", "worst", "worst_low", "worst_high", "worst_attack", "mean_attacked"]
    joined = fill_settings(board).merge(cost, on=SETTING)
    return joined[[*rest, channel, measure, *columns]].sort_values([*rest, "defense", measure])
