"""The report's figures (Plotly), one function each: attack x defense heatmaps, the
leaderboard's bars, trade-off lines, per-round curves. Each takes the tables of
:mod:`robustfl.leaderboard` (or the run table of :mod:`robustfl.runs`) for one setting and
returns a figure; nothing here computes a statistic."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from robustfl.leaderboard import SETTING
from robustfl.results import read_metrics


def ordered(values: pd.Series, first: str) -> list[str]:
    names = sorted(str(v) for v in values.dropna().unique())
    return [first, *[v for v in names if v != first]] if first in names else names


def setting_label(row: Any) -> str:
    param = "" if row.partition_param in ("-", None) else f"({row.partition_param})"
    label = f"{row.dataset}, {row.partition}{param}, n={row.n}, f={row.f}"
    for channel in ("privacy", "compression"):
        value = getattr(row, channel, "-")
        if value not in ("-", "none", None):
            label += f", {channel} {value}"
    engine = getattr(row, "engine", "-")
    if engine not in ("-", None):
        label += f", {engine}"
    return label


def settings(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per setting of ``frame`` (:data:`robustfl.leaderboard.SETTING`)."""
    if frame.empty:
        return []
    labels = frame.apply(setting_label, axis=1)
    return [(label, frame[labels == label]) for label in sorted(labels.unique())]


def heatmap_figure(table: pd.DataFrame, title: str, colorscale: str) -> go.Figure:
    """Attack (rows) x defense (columns) heatmap of ``table`` (:func:`cells` rows of one
    setting): each cell shows the mean over seeds; hovering gives the spread, the seeds and
    the drop from the defense's clean run."""
    attacks = ordered(table["attack"], "none")
    defenses = ordered(table["defense"], "mean")
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
        # a rule whose release the epsilon does not bound (central DP, not the clipped mean)
        uncovered = "epsilon_covers_rule" in part and (part["epsilon_covers_rule"] == False).any()  # noqa: E712
        figure.add_scatter(
            x=part["x"],
            y=part["worst"],
            mode="lines+markers",
            marker={"symbol": "circle-open" if uncovered else "circle"},
            line={"dash": "dot" if uncovered else "solid"},
            name=str(key[-1])
            + (f" ({setting})" if several else "")
            + (" - epsilon not covered" if uncovered else ""),
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
    attacks = [a for a in ordered(data["attack"], "none") if any(k[0] == a for k in series)]
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
