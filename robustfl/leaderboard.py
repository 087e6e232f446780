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

What a defense is scored by (``rank_by``): ``"robust"`` (the default) is the final accuracy,
except under a targeted attack (a run with an attack success rate), where it is
``min(accuracy, 1 - ASR)``: a backdoor that succeeds is a defeat however well the clean task
goes, and a model that keeps the backdoor out by failing the task is no better. Backdoor
defenses are judged on both numbers (Sun et al. 2019, Ozdayi et al. 2021 report the main-task
accuracy and the backdoor accuracy, and a defense succeeds only when the first holds and the
second stays low); the minimum puts the two in one number that a ranking can use. ``"accuracy"`` ranks by the final accuracy alone and
``"asr"`` by ``1 - ASR`` over the targeted attacks alone.

A defense is compared over the attacks its setting ran. One that did not face every one of
them is marked (``missing_attacks``) and ranked after every defense that did, whatever its
worst case: a worst case over fewer attacks is not comparable.

Input frames have one row per run (as :func:`robustfl.runs.collect` builds them): the
columns of :data:`SETTING`, ``defense``, ``attack``, ``seed``, ``status``, ``final_accuracy``
and, for targeted attacks, ``asr``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SETTING = ["dataset", "partition", "partition_param", "n", "f", "privacy", "compression", "engine"]
CLEAN_ATTACK = "none"
RANK_BY = ("robust", "accuracy", "asr")
#: Fewer seeds than this make a 95% interval too wide to decide anything.
FEW_SEEDS = 3


def t_interval(
    values: np.ndarray | pd.Series,
    level: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and the two-sided ``level`` Student-t interval of
    that mean: ``mean -+ t_{(1+level)/2, m-1} * sd / sqrt(m)`` with the sample sd (``ddof=1``),
    clipped to ``bounds`` (the range of the measured quantity); ``(mean, nan, nan)`` for fewer
    than two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    low, high = bounds
    return mean, max(low, mean - half), min(high, mean + half)


def fill_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose :data:`SETTING` columns hold ``"-"`` where they are missing or
    empty, so that grouping by setting keeps every row."""
    filled = frame.copy()
    for column in SETTING:
        filled[column] = filled[column].astype(object).fillna("-") if column in filled else "-"
    return filled


def scored(frame: pd.DataFrame, value: str = "final_accuracy") -> pd.DataFrame:
    """The ended runs (completed or diverged) with ``value`` in column ``score``; a diverged
    run scores 0. ``value`` is a column, or one of :data:`RANK_BY`. Missing setting columns are
    filled with ``"-"`` so that groups stay whole."""
    ended = fill_settings(frame[frame["status"].isin(["completed", "diverged"])])
    accuracy = pd.to_numeric(ended["final_accuracy"], errors="coerce")
    asr = pd.to_numeric(ended.get("asr", pd.Series(np.nan, index=ended.index)), errors="coerce")
    if value == "robust":
        ended["score"] = accuracy.where(asr.isna(), np.minimum(accuracy, 1.0 - asr))
    elif value == "accuracy":
        ended["score"] = accuracy
    elif value == "asr":
        targeted = asr.notna() | (
            (ended["status"] == "diverged") & ended["attack"].isin(ended.loc[asr.notna(), "attack"])
        )
        ended = ended[targeted]
        ended["score"] = 1.0 - asr[targeted]
    else:
        ended["score"] = pd.to_numeric(ended[value], errors="coerce")
    ended.loc[ended["status"] == "diverged", "score"] = 0.0
    return ended.dropna(subset=["score"])


def cells(frame: pd.DataFrame, value: str = "final_accuracy") -> pd.DataFrame:
    """One row per (setting, attack, defense): ``mean``, ``std`` (over seeds, ``ddof=1``),
    ``low``/``high`` (95% interval, inside [0, 1]), ``seeds``, and ``drop``: the defense's clean
    mean minus this mean (NaN without a clean run). A diverged run counts 0; for ``asr`` and
    ``trigger_rate`` that is not a success, so diverged runs are left out of their cells."""
    runs = scored(frame, value)
    if value in ("asr", "trigger_rate"):
        runs = runs[runs["status"] != "diverged"]
    keys = [*SETTING, "attack", "defense"]
    rows = []
    for key, part in runs.groupby(keys, sort=True):
        per_seed = part.groupby("seed")["score"].mean()
        mean, low, high = t_interval(per_seed, bounds=(0.0, 1.0))
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


def _rank_key(row: dict) -> tuple[bool, float, float]:
    """Defenses that faced every attack first; then best worst case first; defenses with
    only clean runs last, by clean accuracy."""
    worst, clean = row.get("worst", math.nan), row.get("clean", math.nan)
    return (
        bool(row.get("missing_attacks")),
        -worst if not math.isnan(worst) else math.inf,
        -clean if not math.isnan(clean) else 0,
    )


def _asr_columns(own: pd.DataFrame) -> dict[str, object]:
    """A defense's worst attack success rate (mean over seeds, highest over the targeted
    attacks) and its clean model's trigger rate (attack ``none``)."""
    out: dict[str, object] = {"worst_asr": math.nan, "worst_asr_attack": None}
    asr = pd.to_numeric(own["asr"], errors="coerce") if "asr" in own else own["seed"] * math.nan
    targeted = own[asr.notna() & (own["status"] == "completed")]
    if len(targeted):
        means = targeted.assign(asr=asr).groupby("attack")["asr"].mean()
        out["worst_asr"], out["worst_asr_attack"] = float(means.max()), str(means.idxmax())
    if "trigger_rate" in own:
        clean = own[own["attack"] == CLEAN_ATTACK]
        rates = pd.to_numeric(clean["trigger_rate"], errors="coerce").dropna()
        out["clean_trigger_rate"] = float(rates.mean()) if len(rates) else math.nan
    return out


def leaderboard(frame: pd.DataFrame, rank_by: str = "robust") -> pd.DataFrame:
    """One row per (setting, defense), ranked within each setting (best first).

    Columns:
        worst, worst_attack, worst_low, worst_high: the lowest, over attacks other than
            ``none``, of the mean score over seeds (``rank_by``), the attack that reaches it,
            and the 95% interval of that mean (inside [0, 1]).
        mean_attacked, mean_low, mean_high: the mean over those attacks, per seed, then over
            seeds (seeds that ran every attack), with its interval.
        clean, drop: the mean over seeds without attack, and ``clean - worst``.
        worst_asr, worst_asr_attack, clean_trigger_rate: the highest attack success rate of
            a targeted attack (mean over seeds), and how often the clean model already maps
            triggered inputs to the target.
        missing_attacks: the setting's attacks this defense did not face (comma-separated;
            empty when complete). ``leader`` marks the first defense that faced them all.
        gap, gap_low, gap_high: the leader's worst case minus this defense's, paired by seed
            (each at its own worst attack), with the interval of the paired differences;
            ``behind`` is true when that interval lies above 0.
        seeds, few_seeds (fewer than :data:`FEW_SEEDS`: intervals uninformative), rank.
    """
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by={rank_by!r} is invalid: use one of {', '.join(RANK_BY)}.")
    runs = scored(frame, rank_by)
    everything = fill_settings(frame)
    rows = []
    for setting, part in runs.groupby(SETTING, sort=True):
        attacked = part[part["attack"] != CLEAN_ATTACK]
        setting_attacks = set(attacked["attack"])
        per_seed = attacked.pivot_table(
            index="seed", columns=["defense", "attack"], values="score", aggfunc="mean"
        )
        in_setting = (everything[SETTING] == pd.Series(setting, index=SETTING)).all(axis=1)
        board = []
        for defense, own in part.groupby("defense"):
            row = dict(zip(SETTING, setting, strict=True), defense=defense)
            row["clean"] = own.loc[own["attack"] == CLEAN_ATTACK, "score"].mean()
            row["seeds"] = own["seed"].nunique()
            row["missing_attacks"] = ",".join(sorted(setting_attacks - set(own["attack"])))
            row["worst_series"] = None
            row.update(_asr_columns(everything[in_setting & (everything["defense"] == defense)]))
            if defense in per_seed.columns.get_level_values(0):
                table = per_seed[defense]
                means = table.mean()
                attack = str(means.idxmin())
                row["worst"], row["worst_attack"] = float(means.min()), attack
                _, row["worst_low"], row["worst_high"] = t_interval(
                    table[attack], bounds=(0.0, 1.0)
                )
                complete = table.dropna()
                row["mean_attacked"], row["mean_low"], row["mean_high"] = t_interval(
                    complete.mean(axis=1), bounds=(0.0, 1.0)
                )
                row["worst_series"] = table[attack]
            board.append(row)
        board.sort(key=_rank_key)
        first = board[0] if board else None
        leader = None
        if first is not None and not first["missing_attacks"]:
            leader = first.get("worst_series")
        for rank, row in enumerate(board, start=1):
            row["rank"] = rank
            row["leader"] = rank == 1 and leader is not None
            series = row.pop("worst_series")
            if leader is not None and series is not None:
                paired = (leader - series).dropna()
                row["gap"], row["gap_low"], row["gap_high"] = t_interval(paired, bounds=(-1.0, 1.0))
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
        "worst_asr",
        "worst_asr_attack",
        "clean_trigger_rate",
        "missing_attacks",
        "leader",
        "gap",
        "gap_low",
        "gap_high",
        "behind",
        "seeds",
        "few_seeds",
    ]
    board = pd.DataFrame(rows).reindex(columns=columns)
    board["drop"] = board["clean"] - board["worst"]
    board["few_seeds"] = board["seeds"] < FEW_SEEDS
    board.attrs["rank_by"] = rank_by
    return board.reset_index(drop=True)


def worst_case_grid(frame: pd.DataFrame, value: str = "best_accuracy") -> pd.DataFrame:
    """ByzFL's heatmap cell for every (defense, f, partition parameter): the lowest, over
    attacks, of ``value`` averaged over seeds; long format with the attack that reached it.
    Only ended runs (completed or diverged) count."""
    keys = ["defense", "f", "partition_param"]
    ended = frame[frame["status"].isin(["completed", "diverged"])]
    done = ended.dropna(subset=[value]).copy()
    if done.empty:
        return pd.DataFrame(columns=[*keys, value, "worst_attack"])
    done["partition_param"] = done["partition_param"].fillna("-")
    means = done.groupby([*keys, "attack"])[value].mean().reset_index()
    worst = means.loc[means.groupby(keys)[value].idxmin()]
    worst = worst.rename(columns={"attack": "worst_attack"})
    return worst[[*keys, value, "worst_attack"]].sort_values(keys).reset_index(drop=True)


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
    if channel == "privacy" and "epsilon_covers_rule" in keyed:
        # whether the epsilon covers the defense's release: False once any run says not
        covers = keyed[varied].dropna(subset=["epsilon_covers_rule"])
        covers = covers.assign(epsilon_covers_rule=covers["epsilon_covers_rule"].astype(bool))
        covers = covers.groupby([*SETTING, "defense"], as_index=False)["epsilon_covers_rule"].min()
        joined = joined.merge(covers, on=[*SETTING, "defense"], how="left")
        columns.append("epsilon_covers_rule")
    return joined[[*rest, channel, measure, *columns]].sort_values([*rest, "defense", measure])
