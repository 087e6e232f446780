"""``robustfl-report DIR... [-o OUT]``: which defense to use, and how sure that is.

Reads every run folder below the given folders (single runs and sweeps, any mix; a run needs
only its folder) and writes into ``OUT``:

- ``results.csv``: one row per run (finished, diverged, failed or unfinished);
- ``leaderboard.csv`` and ``cells.csv``: the statistics of :mod:`robustfl.leaderboard`;
- ``report.html``, one self-contained page that works offline: the leaderboard (worst case
  and mean over attacks with 95% intervals over seeds, drop from the clean run, paired gap to
  the leader), the attack x defense heatmaps of accuracy and ASR (hover: mean, spread, seeds,
  drop), robustness diagnostics, accuracy and ASR curves (click a defense in the legend to
  hide it in every panel), ByzFL's worst-case grid when ``f`` or the partition parameter
  varies, and every run. Figures are Plotly; tables are DataTables through itables (sort by
  a column, filter with the search box).
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml
from itables import to_html_datatable
from itables.javascript import generate_init_offline_itables_html
from itables.utils import find_package_file
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from robustfl.config import channel_label, defense_label
from robustfl.leaderboard import SETTING, cells, fill_settings, leaderboard, tradeoff
from robustfl.results import METRICS_FILE, SUMMARY_FILE, read_metrics

COLUMNS = [
    "attack",
    "defense",
    "dataset",
    "partition",
    "partition_param",
    "model",
    "n",
    "f",
    "privacy",
    "compression",
    "seed",
    "final_accuracy",
    "last5_accuracy",
    "best_accuracy",
    "asr",
    "worst_robustness_error",
    "byzantine_selected_share",
    "epsilon",
    "bits_per_client",
    "status",
    "run_dir",
]


def find_runs(roots: list[Path]) -> list[Path]:
    """Run folders below ``roots``: those with a ``summary.json``, ``metrics.jsonl`` or a
    Hydra ``.hydra/config.yaml``."""
    found: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"robustfl-report: {root} does not exist")
        for marker in (SUMMARY_FILE, METRICS_FILE, ".hydra/config.yaml"):
            for path in root.rglob(marker):
                folder = path.parent.parent if marker.startswith(".hydra") else path.parent
                if "wandb" not in folder.parts:
                    found.add(folder)
    return sorted(found)


def _partition_param(partition: dict[str, Any]) -> Any:
    for key in ("alpha", "shards_per_client", "gamma"):
        if key in partition:
            return partition[key]
    return None


def run_row(folder: Path) -> dict[str, Any]:
    """One row of ``results.csv`` for a run folder, finished or not."""
    config: dict[str, Any] = {}
    config_file = folder / ".hydra" / "config.yaml"
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text()) or {}
    summary: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).exists():
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    fl = config.get("fl", {})
    partition = config.get("partition", {}) or {}
    history = read_metrics(folder)
    final = summary.get("final", {})
    accuracies = [h["accuracy"] for h in history if h.get("accuracy") is not None]
    return {
        "attack": summary.get("attack") or config.get("attack", {}).get("name"),
        # The summary's label names the pre-aggregators too.
        "defense": summary.get("defense")
        or (defense_label(config) if config.get("defense") else None),
        "dataset": summary.get("dataset") or config.get("dataset", {}).get("name"),
        "partition": summary.get("partition") or partition.get("name"),
        "partition_param": _partition_param(partition),
        "n": summary.get("num_clients", fl.get("num_clients")),
        "f": summary.get("num_byzantine", fl.get("num_byzantine")),
        "seed": summary.get("seed", config.get("seed")),
        "final_accuracy": final.get("accuracy", accuracies[-1] if accuracies else None),
        "last5_accuracy": final.get("accuracy_last5_mean", _mean_last(accuracies, 5)),
        "best_accuracy": summary.get("best", {}).get(
            "accuracy", max(accuracies) if accuracies else None
        ),
        "asr": final.get("asr"),
        "privacy": summary.get("privacy") or channel_label(config, "privacy"),
        "compression": summary.get("compression") or channel_label(config, "compression"),
        "epsilon": summary.get("privacy_mechanism", {}).get("epsilon"),
        "bits_per_client": summary.get("compression_scheme", {}).get("bits_per_message"),
        "worst_robustness_error": summary.get("worst_robustness_error"),
        "byzantine_selected_share": summary.get("byzantine_selected_share"),
        "model": summary.get("model") or config.get("model", {}).get("name"),
        "status": summary.get("status", "unfinished"),
        "run_dir": str(folder),
    }


def _mean_last(values: list[float], k: int) -> float | None:
    return sum(values[-k:]) / len(values[-k:]) if values else None


def collect(roots: list[Path]) -> pd.DataFrame:
    rows = [run_row(folder) for folder in find_runs(roots)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("attack", "defense", "dataset", "partition"):
        frame[column] = frame[column].fillna("unknown").astype(str)
    return frame


def _order(values: pd.Series, first: str) -> list[str]:
    names = sorted(str(v) for v in values.dropna().unique())
    return [first, *[v for v in names if v != first]] if first in names else names


def _setting_label(row: Any) -> str:
    param = "" if row.partition_param in ("-", None) else f"({row.partition_param})"
    label = f"{row.dataset}, {row.partition}{param}, n={row.n}, f={row.f}"
    for channel in ("privacy", "compression"):
        value = getattr(row, channel, "-")
        if value not in ("-", "none", None):
            label += f", {channel} {value}"
    return label


def _settings(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per setting of ``frame`` (:data:`robustfl.leaderboard.SETTING`)."""
    if frame.empty:
        return []
    labels = frame.apply(_setting_label, axis=1)
    return [(label, frame[labels == label]) for label in sorted(labels.unique())]


def heatmap_figure(table: pd.DataFrame, title: str, colorscale: str) -> go.Figure:
    """Attack (rows) x defense (columns) heatmap of ``table`` (:func:`cells` rows of one
    setting): each cell shows the mean over seeds; hovering gives the spread, the seeds and
    the drop from the defense's clean run."""
    attacks = _order(table["attack"], "none")
    defenses = _order(table["defense"], "mean")
    grid = table.set_index(["attack", "defense"])

    def matrix(column: str) -> list[list[Any]]:
        return [[grid[column].get((a, d), math.nan) for d in defenses] for a in attacks]

    mean, std, seeds, drop = matrix("mean"), matrix("std"), matrix("seeds"), matrix("drop")

    def number(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.3f}"

    custom = [
        [
            f"std {number(std[i][j])}, seeds {0 if math.isnan(seeds[i][j]) else int(seeds[i][j])}"
            f"<br>drop from clean {number(drop[i][j])}"
            for j in range(len(defenses))
        ]
        for i in range(len(attacks))
    ]
    figure = go.Figure(
        go.Heatmap(
            z=mean,
            x=defenses,
            y=attacks,
            zmin=0,
            zmax=1,
            colorscale=colorscale,
            customdata=custom,
            texttemplate="%{z:.2f}",
            hovertemplate="attack %{y}<br>defense %{x}<br>mean %{z:.3f}<br>%{customdata}"
            "<extra></extra>",
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="defense",
        yaxis_title="attack",
        yaxis_autorange="reversed",
        height=120 + 40 * len(attacks),
        margin={"l": 120, "r": 20, "t": 50, "b": 100},
    )
    return figure


def leaderboard_figure(board: pd.DataFrame) -> go.Figure:
    """Worst case and mean over attacks per defense (one setting), with 95% intervals."""
    board = board.dropna(subset=["worst"])
    figure = go.Figure()
    for column, low, high, name in (
        ("worst", "worst_low", "worst_high", "worst case over attacks"),
        ("mean_attacked", "mean_low", "mean_high", "mean over attacks"),
    ):
        figure.add_bar(
            x=board["defense"],
            y=board[column],
            name=name,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (board[high] - board[column]).fillna(0),
                "arrayminus": (board[column] - board[low]).fillna(0),
            },
            customdata=board[["worst_attack", "clean", "drop"]].to_numpy(),
            hovertemplate="%{x}: %{y:.3f}<br>worst attack %{customdata[0]}"
            "<br>clean %{customdata[1]:.3f}, drop %{customdata[2]:.3f}<extra></extra>",
        )
    figure.update_layout(
        barmode="group",
        yaxis={"range": [0, 1], "title": "final accuracy"},
        height=380,
        margin={"t": 30, "b": 100},
    )
    return figure


TRADEOFFS = {
    "privacy": ("epsilon", "privacy spent: epsilon (log scale)"),
    "compression": ("bits_per_client", "compressor, by bits per client per round"),
}


def tradeoff_figure(table: pd.DataFrame, channel: str) -> go.Figure:
    """Worst case over attacks against the cost of ``channel`` (one line per defense and
    setting), with 95% intervals: against epsilon on a log scale, or against the compressors
    ordered by the bits they send (several may send the same number)."""
    measure, title = TRADEOFFS[channel]
    rest = [c for c in SETTING if c != channel]
    table = table.sort_values([measure, channel], ascending=channel == "privacy")
    if channel == "compression":
        x_values = table[channel].str.split("(").str[0] + table[measure].map(
            lambda bits: f" ({bits:,.0f} bits)"
        )
        xaxis = {"title": title, "type": "category", "categoryarray": x_values.unique()}
    else:
        x_values = table[measure]
        xaxis = {"title": title, "type": "log"}
    table = table.assign(x=x_values)
    several = table[rest].drop_duplicates().shape[0] > 1
    figure = go.Figure()
    for key, part in table.groupby([*rest, "defense"], sort=True):
        setting = ", ".join(str(v) for v in key[:-1] if v not in ("-", "none"))
        figure.add_scatter(
            x=part["x"],
            y=part["worst"],
            mode="lines+markers",
            name=str(key[-1]) + (f" ({setting})" if several else ""),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (part["worst_high"] - part["worst"]).fillna(0),
                "arrayminus": (part["worst"] - part["worst_low"]).fillna(0),
            },
            customdata=part[[channel, measure, "worst_attack"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>" + measure + " %{customdata[1]:.4g}: "
            "worst case %{y:.3f}<br>under %{customdata[2]}<extra>%{fullData.name}</extra>",
        )
    figure.update_layout(
        xaxis=xaxis,
        yaxis={"range": [0, 1], "title": "worst case over attacks (final accuracy)"},
        height=420,
        margin={"t": 30},
    )
    return figure


def curves_figure(frame: pd.DataFrame, metric: str) -> go.Figure | None:
    """Per attack (one panel each), ``metric`` per round, one line per defense: the mean over
    seeds and a band from the lowest to the highest seed. Defenses share a legend entry
    across panels, so one click hides or shows a defense everywhere."""
    data = frame[frame["status"] != "failed"]
    series: dict[tuple[str, str], list[pd.Series]] = {}
    for row in data.itertuples():
        history = [h for h in read_metrics(row.run_dir) if h.get(metric) is not None]
        if history:
            series.setdefault((row.attack, row.defense), []).append(
                pd.Series([h[metric] for h in history], index=[h["round"] for h in history])
            )
    if not series:
        return None
    attacks = [a for a in _order(data["attack"], "none") if any(k[0] == a for k in series)]
    defenses = sorted({d for _, d in series})
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ]  # fmt: skip
    color = {d: palette[i % len(palette)] for i, d in enumerate(defenses)}
    cols = min(3, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=[f"attack: {a}" for a in attacks])
    shown: set[str] = set()
    for index, attack in enumerate(attacks):
        r, c = index // cols + 1, index % cols + 1
        for defense in defenses:
            runs = series.get((attack, defense))
            if not runs:
                continue
            table = pd.concat(runs, axis=1).sort_index()
            x = list(table.index)
            if table.shape[1] > 1:
                figure.add_scatter(
                    x=x + x[::-1],
                    y=list(table.max(axis=1)) + list(table.min(axis=1))[::-1],
                    fill="toself",
                    fillcolor=color[defense],
                    opacity=0.15,
                    line={"width": 0},
                    hoverinfo="skip",
                    legendgroup=defense,
                    showlegend=False,
                    row=r,
                    col=c,
                )
            figure.add_scatter(
                x=x,
                y=table.mean(axis=1),
                mode="lines",
                name=defense,
                line={"color": color[defense]},
                legendgroup=defense,
                showlegend=defense not in shown,
                hovertemplate=f"{defense}<br>round %{{x}}: %{{y:.3f}}<extra></extra>",
                row=r,
                col=c,
            )
            shown.add(defense)
    figure.update_yaxes(range=[0, 1])
    figure.update_xaxes(title_text="round")
    figure.update_layout(
        height=300 * rows, title=f"{metric} per round (mean over seeds, band: min to max)"
    )
    return figure


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
    elif (runs.get("privacy", pd.Series(dtype=object)).fillna("none") != "none").any():
        costs.append("privacy spent: epsilon = inf (clipping without noise)")
    bits = pd.to_numeric(runs.get("bits_per_client"), errors="coerce").dropna()
    if len(bits):
        costs.append(f"bits per client per round: {int(bits.max()):,}")
    return [f"<p class='costs'>{'; '.join(costs)}.</p>"] if costs else []


def _setting_section(
    label: str, runs: pd.DataFrame, board: pd.DataFrame, table: pd.DataFrame, index: int
) -> list[str]:
    parts = [f"<h2>{html.escape(label)}</h2>", *_channel_costs(runs)]
    leader = board.iloc[0] if not board.empty else None
    if leader is not None and not math.isnan(leader["worst"]):
        sure = board["behind"].fillna(False).astype(bool)
        close = board.loc[~sure & (board["rank"] > 1), "defense"].tolist()
        verdict = (
            f"Best worst case: <b>{html.escape(str(leader['defense']))}</b> "
            f"({leader['worst']:.3f}, under {html.escape(str(leader['worst_attack']))}). "
        )
        if leader["seeds"] < 2:
            verdict += "One seed: no interval; run more seeds (seed=0,1,2) to rank with confidence."
        elif close:
            verdict += (
                "Not clearly ahead of: "
                + ", ".join(html.escape(str(d)) for d in close)
                + " (their paired 95% interval of the gap includes 0)."
            )
        else:
            verdict += "Clearly ahead of every other defense (paired 95% intervals above 0)."
        parts.append(f"<p class='verdict'>{verdict}</p>")
    shown = board[[c for c in LEADERBOARD_COLUMNS if c in board]].rename(
        columns=LEADERBOARD_COLUMNS
    )
    parts += [
        "<h3>Leaderboard</h3>",
        "<p>Final accuracy. Worst case: the lowest mean over seeds among the attacks; its "
        "interval is over seeds. Gap: the leader's worst case minus this defense's, paired by "
        "seed (same data and Byzantine clients); clearly behind: its interval lies above 0.</p>",
        _table(shown, f"leaderboard_{index}"),
        _figure(leaderboard_figure(board), f"leaderboard_plot_{index}"),
        "<h3>Attack x defense</h3>",
        _figure(
            heatmap_figure(table, "final accuracy, mean over seeds", "Viridis"),
            f"accuracy_heatmap_{index}",
        ),
    ]
    asr = cells(runs, "asr")
    if not asr.empty:
        parts.append(
            _figure(
                heatmap_figure(asr, "backdoor: attack success rate", "Reds"), f"asr_heatmap_{index}"
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


def write_report(roots: list[Path], out: Path) -> Path:
    """Write results.csv, leaderboard.csv, cells.csv and report.html into ``out``; return the
    HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    frame = collect(roots)
    frame.to_csv(out / "results.csv", index=False)
    board = leaderboard(frame)
    table = cells(frame)
    board.to_csv(out / "leaderboard.csv", index=False)
    table.to_csv(out / "cells.csv", index=False)
    counts = frame["status"].value_counts().to_dict()
    notes = sorted({n for folder in frame["run_dir"] for n in _data_notes(Path(folder))})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>robustfl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}"
        ".verdict{font-size:1.1em;background:#f3f6fa;padding:.6em}</style>",
        f"<script>{get_plotlyjs()}</script>",
        generate_init_offline_itables_html(find_package_file("html/dt_bundle.js")),
        "</head><body>",
        "<h1>robustfl report</h1>",
        f"<p>{len(frame)} runs: "
        + ", ".join(f"{v} {html.escape(str(k))}" for k, v in sorted(counts.items()))
        + ". A diverged run scores 0.</p>",
        "".join(f"<p><i>{html.escape(n)}</i></p>" for n in notes),
    ]
    keyed = fill_settings(frame)
    boards = {label: rows for label, rows in _settings(board)}
    tables = {label: rows for label, rows in _settings(table)}
    for index, (label, runs) in enumerate(_settings(keyed)):
        if label in boards:
            parts += _setting_section(label, runs, boards[label], tables[label], index)
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
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0] / "report"
    try:
        target = write_report(args.dirs, out)
    except FileNotFoundError as error:
        parser.exit(2, f"{error}\n")
    frame = pd.read_csv(out / "results.csv")
    print(f"robustfl-report: {len(frame)} runs -> {out / 'results.csv'}")
    print(ranking_text(pd.read_csv(out / "leaderboard.csv")))
    print(f"report: {target.resolve()}")


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"


def ranking_text(board: pd.DataFrame) -> str:
    """The leaderboard as text, one block per setting: rank, defense, worst case over attacks
    with its 95% interval and attack, mean over attacks, and whether it is clearly behind the
    leader."""
    if board.empty:
        return "ranking: no ended runs"
    blocks = []
    for label, rows in _settings(fill_settings(board)):
        lines = [f"ranking ({label}), by worst-case final accuracy over attacks:"]
        for row in rows.sort_values("rank").itertuples():
            if isinstance(row.worst, float) and math.isnan(row.worst):
                lines.append(
                    f"{row.rank:>3}. {row.defense:<28} clean {row.clean:.3f} (no attack ran)"
                )
                continue
            behind = "  clearly behind" if row.behind is True else ""
            lines.append(
                f"{row.rank:>3}. {row.defense:<28} worst {row.worst:.3f}"
                f"{_interval(row.worst_low, row.worst_high)} ({row.worst_attack}), "
                f"mean {row.mean_attacked:.3f}{behind}"
            )
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


if __name__ == "__main__":
    main()
