"""``robustfl-report DIR... [-o OUT] [--rank-by robust|accuracy|asr]``: which defense to use,
and how sure that is.

Reads every run folder below the given folders (single runs and sweeps, any mix; a run needs
only its folder, :mod:`robustfl.runs`) and writes into ``OUT``:

- ``results.csv``: one row per run (finished, diverged, failed or unfinished);
- ``problems.csv``: the folders left out, each with its reason (unreadable or inconsistent);
- ``leaderboard.csv`` and ``cells.csv``: the statistics of :mod:`robustfl.leaderboard`;
- ``report.html``, one self-contained page that works offline: the leaderboard (worst case
  and mean over attacks with 95% intervals over seeds, worst attack success rate, attacks a
  defense did not face, drop from the clean run, paired gap to the leader), the attack x
  defense heatmaps of accuracy and ASR (hover: mean, spread, seeds, drop), robustness
  diagnostics, accuracy and ASR curves (click a defense in the legend to hide it in every
  panel), ByzFL's worst-case grid when ``f`` or the partition parameter varies, and every run
  (:mod:`robustfl.figures`). Tables are DataTables through itables (sort by a column, filter
  with the search box).

By default a defense's score under a targeted attack is ``min(accuracy, 1 - ASR)``
(:mod:`robustfl.leaderboard`); ``--rank-by accuracy`` or ``--rank-by asr`` gives the
accuracy-only and ASR-only views.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from itables import to_html_datatable
from itables.javascript import generate_init_offline_itables_html
from itables.utils import find_package_file
from plotly.offline import get_plotlyjs

from robustfl.figures import (
    TRADEOFFS,
    curves_figure,
    heatmap_figure,
    leaderboard_figure,
    settings,
    tradeoff_figure,
)
from robustfl.leaderboard import (
    FEW_SEEDS,
    RANK_BY,
    cells,
    fill_settings,
    leaderboard,
    tradeoff,
    worst_case_grid,
)
from robustfl.results import SUMMARY_FILE
from robustfl.runs import collect

#: What each ``--rank-by`` scores, in words for the page and the printed ranking.
SCORE_NAMES = {
    "robust": "final accuracy, min(accuracy, 1 - ASR) under targeted attacks",
    "accuracy": "final accuracy",
    "asr": "1 - attack success rate, targeted attacks only",
}


def _table(frame: pd.DataFrame, table_id: str, digits: int = 3) -> str:
    """A sortable, searchable table (DataTables through itables)."""
    shown = frame.copy()
    for column in shown.select_dtypes("number").columns:
        shown[column] = shown[column].round(digits)
    return to_html_datatable(
        shown,
        table_id=table_id,
        connected=False,
        showIndex=False,
        classes="display compact",
        # the search box first: itables drops the controls of its default layout when the
        # rows fit on one page, and a short table should stay filterable
        layout={
            "topStart": "search",
            "topEnd": "pageLength",
            "bottomStart": "info",
            "bottomEnd": "paging",
        },
        pageLength=25,
    )


def _figure(figure: go.Figure | None, div_id: str) -> str:
    if figure is None:
        return ""
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)


LEADERBOARD_COLUMNS = {
    "rank": "rank",
    "defense": "defense",
    "worst": "worst case",
    "worst_low": "worst 95% low",
    "worst_high": "worst 95% high",
    "worst_attack": "worst attack",
    "mean_attacked": "mean over attacks",
    "mean_low": "mean 95% low",
    "mean_high": "mean 95% high",
    "clean": "clean",
    "drop": "drop",
    "worst_asr": "worst ASR",
    "worst_asr_attack": "worst ASR attack",
    "clean_trigger_rate": "clean trigger rate",
    "missing_attacks": "attacks not faced",
    "gap": "gap to leader",
    "gap_low": "gap 95% low",
    "gap_high": "gap 95% high",
    "behind": "clearly behind",
    "seeds": "seeds",
}


def _channel_costs(runs: pd.DataFrame) -> list[str]:
    """A line with the setting's privacy spent and bits per client, when it has them."""
    costs = []
    epsilon = pd.to_numeric(runs.get("epsilon"), errors="coerce").dropna()
    if len(epsilon):
        costs.append(f"privacy spent: epsilon = {epsilon.max():.4g} (the largest of its runs)")
        covers = runs.get("epsilon_covers_rule", pd.Series(dtype=object)).dropna()
        uncovered = sorted(runs.loc[covers[covers == False].index, "defense"].unique())  # noqa: E712
        if uncovered:
            costs.append(
                "this epsilon does not cover " + ", ".join(uncovered) + " (central DP bounds "
                "the mean of the clipped rows only)"
            )
    elif (runs.get("privacy", pd.Series(dtype=object)).fillna("none") != "none").any():
        costs.append("privacy spent: epsilon = inf (clipping without noise)")
    bits = pd.to_numeric(runs.get("bits_per_client"), errors="coerce").dropna()
    if len(bits):
        costs.append(f"bits per client per round: {int(bits.max()):,}")
    return [f"<p class='costs'>{'; '.join(costs)}.</p>"] if costs else []


def missing_attacks(board: pd.DataFrame) -> pd.Series:
    """The ``missing_attacks`` column as strings, empty for a defense that faced them all."""
    column = board["missing_attacks"].astype(object)
    return column.where(column.notna(), "")


def verdict(board: pd.DataFrame) -> str:
    """One setting's verdict in words (plain text): the leader and how sure, or why there is
    none; which defenses did not face every attack; when the seeds are too few."""
    if board.empty or board["worst"].isna().all():
        return "No attacked runs: nothing to rank."
    parts = []
    leader = board[board["leader"].fillna(False).astype(bool)]
    incomplete = board[missing_attacks(board) != ""]
    if leader.empty:
        parts.append(
            "No leader: no defense faced every attack of this setting "
            "(run the missing attacks to rank them)."
        )
    else:
        row = leader.iloc[0]
        parts.append(
            f"Best worst case: {row['defense']} ({row['worst']:.3f}, under {row['worst_attack']})."
        )
        close = board[~board["behind"].fillna(False).astype(bool) & (board["rank"] > 1)]
        close = close[missing_attacks(close) == ""]
        if row["seeds"] < 2:
            parts.append(
                "One seed: no interval; run more seeds (seed=0,1,2) to rank with confidence."
            )
        elif not close.empty:
            parts.append(
                "Not clearly ahead of: "
                + ", ".join(str(d) for d in close["defense"])
                + " (their paired 95% interval of the gap includes 0)."
            )
        else:
            parts.append("Clearly ahead of every other defense (paired 95% intervals above 0).")
    for row in incomplete.itertuples():
        parts.append(
            f"{row.defense} did not face {row.missing_attacks.replace(',', ', ')}: its worst "
            "case is over fewer attacks, so it is ranked after every defense that faced all."
        )
    few = board[board["few_seeds"].fillna(False).astype(bool) & (board["seeds"] >= 2)]
    if not few.empty:
        parts.append(
            f"Fewer than {FEW_SEEDS} seeds for "
            + ", ".join(str(d) for d in few["defense"])
            + ": their 95% intervals are too wide to decide much."
        )
    return " ".join(parts)


def _setting_section(label: str, runs: pd.DataFrame, board: pd.DataFrame, index: int) -> list[str]:
    rank_by = board.attrs.get("rank_by", "robust")
    parts = [f"<h2>{html.escape(label)}</h2>", *_channel_costs(runs)]
    parts.append(f"<p class='verdict'>{html.escape(verdict(board))}</p>")
    shown = board[[c for c in LEADERBOARD_COLUMNS if c in board]].rename(
        columns=LEADERBOARD_COLUMNS
    )
    parts += [
        "<h3>Leaderboard</h3>",
        f"<p>Score: {html.escape(SCORE_NAMES[rank_by])}. Worst case: the lowest mean over "
        "seeds among the attacks; its interval is over seeds (inside [0, 1]). Worst ASR: the "
        "highest attack success rate of a targeted attack, beside the clean model's trigger "
        "rate. Gap: the leader's worst case minus this defense's, paired by seed (same data "
        "and Byzantine clients); clearly behind: its interval lies above 0. A defense with "
        "attacks not faced is ranked after every defense that faced all.</p>",
        _table(shown, f"leaderboard_{index}"),
        _figure(leaderboard_figure(board), f"leaderboard_plot_{index}"),
        "<h3>Attack x defense</h3>",
        _figure(
            heatmap_figure(cells(runs), "final accuracy, mean over seeds", "Viridis"),
            f"accuracy_heatmap_{index}",
        ),
    ]
    asr = cells(runs, "asr")
    if not asr.empty:
        clean = cells(runs, "trigger_rate")
        parts.append(
            _figure(
                heatmap_figure(
                    pd.concat([clean, asr]),
                    "backdoor: attack success rate (none: the clean model's trigger rate)",
                    "Reds",
                ),
                f"asr_heatmap_{index}",
            )
        )
    diagnostics = (
        runs.groupby(["attack", "defense"], as_index=False)[
            ["worst_robustness_error", "byzantine_selected_share"]
        ]
        .mean()
        .dropna(how="all", subset=["worst_robustness_error", "byzantine_selected_share"])
    )
    if not diagnostics.empty:
        parts += [
            "<h3>Robustness diagnostics</h3>",
            "<p>Mean over seeds of the worst robustness error "
            "||aggregate - honest mean|| / ||honest mean|| over rounds, and of the share of "
            "Byzantine rows a selecting rule kept.</p>",
            _table(diagnostics, f"diagnostics_{index}"),
        ]
    parts += [
        _figure(curves_figure(runs, "accuracy"), f"accuracy_curves_{index}"),
        _figure(curves_figure(runs, "asr"), f"asr_curves_{index}"),
    ]
    return parts


def _problems_section(problems: pd.DataFrame, warnings: list[str]) -> list[str]:
    parts = []
    if not problems.empty:
        parts += [
            f"<h2>Folders left out ({len(problems)})</h2>",
            "<p>Unreadable or inconsistent: not counted in any statistic.</p>",
            _table(problems, "problems"),
        ]
    parts += [f"<p class='warning'>{html.escape(w)}</p>" for w in warnings]
    return parts


def write_report(roots: list[Path], out: Path, rank_by: str = "robust") -> Path:
    """Write results.csv, problems.csv, leaderboard.csv, cells.csv and report.html into
    ``out``; return the HTML path. Warnings about what the statistics pool or split are
    printed to stderr and shown on the page."""
    out.mkdir(parents=True, exist_ok=True)
    collected = collect(roots)
    for warning in collected.warnings:
        print(f"robustfl-report: warning: {warning}", file=sys.stderr)
    frame = collected.frame
    frame.to_csv(out / "results.csv", index=False)
    collected.problems.to_csv(out / "problems.csv", index=False)
    board = leaderboard(frame, rank_by)
    board.to_csv(out / "leaderboard.csv", index=False)
    cells(frame).to_csv(out / "cells.csv", index=False)
    counts = frame["status"].value_counts().to_dict()
    notes = sorted({n for folder in frame["run_dir"] for n in _data_notes(Path(folder))})
    reasons = frame.loc[frame["status"] != "completed", ["status", "reason"]].dropna()
    reasons = reasons.replace(r" in round \d+", "", regex=True).value_counts()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>robustfl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}"
        ".verdict{font-size:1.1em;background:#f3f6fa;padding:.6em}"
        ".warning{background:#fff4e0;padding:.4em}</style>",
        f"<script>{get_plotlyjs()}</script>",
        generate_init_offline_itables_html(find_package_file("html/dt_bundle.js")),
        "</head><body>",
        "<h1>robustfl report</h1>",
        f"<p>{len(frame)} runs: "
        + ", ".join(f"{v} {html.escape(str(k))}" for k, v in sorted(counts.items()))
        + (
            f"; {len(collected.problems)} folders left out (below)"
            if len(collected.problems)
            else ""
        )
        + ". A diverged run (training made the model non-finite) scores 0.</p>",
        "".join(
            f"<p>{html.escape(str(status))} ({count}): {html.escape(str(reason))}</p>"
            for (status, reason), count in reasons.items()
        ),
        "".join(f"<p><i>{html.escape(n)}</i></p>" for n in notes),
        *_problems_section(collected.problems, collected.warnings),
    ]
    keyed = fill_settings(frame)
    boards = {label: rows for label, rows in settings(board)}
    for index, (label, runs) in enumerate(settings(keyed)):
        if label in boards:
            parts += _setting_section(label, runs, boards[label], index)
    for channel, (measure, _) in TRADEOFFS.items():
        table = tradeoff(frame, board, channel, measure)
        if table.empty:
            continue
        table.to_csv(out / f"{channel}_tradeoff.csv", index=False)
        parts += [
            f"<h2>Worst case over attacks against {html.escape(measure.replace('_', ' '))}</h2>",
            f"<p>Each defense's leaderboard worst case (95% interval over seeds) in every "
            f"{channel} setting of otherwise equal runs.</p>",
            _figure(tradeoff_figure(table, channel), f"{channel}_tradeoff"),
            _table(table, f"{channel}_tradeoff_table"),
        ]
    grid = worst_case_grid(frame)
    varied = frame["f"].nunique() > 1 or frame["partition_param"].nunique() > 1
    if varied and not grid.empty:
        grid.to_csv(out / "worst_case_grid.csv", index=False)
        parts += [
            "<h2>Worst case over attacks of the best accuracy, per f and partition parameter</h2>",
            _table(grid, "worst_case_grid"),
        ]
    parts += [
        "<h2>All runs</h2>",
        _table(frame.drop(columns=["run_dir"]), "runs"),
        "</body></html>",
    ]
    target = out / "report.html"
    target.write_text("\n".join(parts))
    return target


def _data_notes(folder: Path) -> list[str]:
    path = folder / SUMMARY_FILE
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text()).get("data_notes", []))
    except json.JSONDecodeError:
        return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="robustfl-report", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument(
        "-o", "--out", type=Path, default=None, help="output folder (default: <first DIR>/report)"
    )
    parser.add_argument(
        "--rank-by",
        choices=RANK_BY,
        default="robust",
        help="robust (default): min(accuracy, 1 - ASR) under targeted attacks; accuracy: "
        "accuracy alone; asr: 1 - ASR over the targeted attacks alone",
    )
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0] / "report"
    try:
        target = write_report(args.dirs, out, args.rank_by)
    except FileNotFoundError as error:
        parser.exit(2, f"{error}\n")
    frame = pd.read_csv(out / "results.csv")
    problems = pd.read_csv(out / "problems.csv")
    print(f"robustfl-report: {len(frame)} runs -> {out / 'results.csv'}")
    if len(problems):
        print(
            f"robustfl-report: {len(problems)} folders left out (unreadable or inconsistent), "
            f"listed in {out / 'problems.csv'}:"
        )
        for row in problems.itertuples():
            print(f"  {row.run_dir}: {row.problem}")
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=True)
    board.attrs["rank_by"] = args.rank_by
    print(ranking_text(board))
    print(f"report: {target.resolve()}")


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"


def ranking_text(board: pd.DataFrame) -> str:
    """The leaderboard as text, one block per setting: rank, defense, worst case over attacks
    with its 95% interval and attack, mean over attacks, the worst ASR where a targeted attack
    ran, the attacks a defense did not face, whether it is clearly behind the leader; then the
    verdict's caveats."""
    if board.empty:
        return "ranking: no ended runs"
    rank_by = board.attrs.get("rank_by", "robust")
    blocks = []
    for label, rows in settings(fill_settings(board)):
        lines = [f"ranking ({label}), by worst case over attacks of the {SCORE_NAMES[rank_by]}:"]
        for row in rows.sort_values("rank").itertuples():
            if isinstance(row.worst, float) and math.isnan(row.worst):
                lines.append(
                    f"{row.rank:>3}. {row.defense:<28} clean {row.clean:.3f} (no attack ran)"
                )
                continue
            notes = ""
            if isinstance(row.worst_asr, float) and not math.isnan(row.worst_asr):
                notes += f", worst ASR {row.worst_asr:.2f} ({row.worst_asr_attack})"
            if isinstance(row.missing_attacks, str) and row.missing_attacks:
                notes += f"  MISSING {row.missing_attacks.replace(',', ', ')}"
            if row.behind is True:
                notes += "  clearly behind"
            lines.append(
                f"{row.rank:>3}. {row.defense:<28} worst {row.worst:.3f}"
                f"{_interval(row.worst_low, row.worst_high)} ({row.worst_attack}), "
                f"mean {row.mean_attacked:.3f}{notes}"
            )
        lines.append("  " + verdict(rows))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


if __name__ == "__main__":
    main()
