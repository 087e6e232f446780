"""``robustfl-report DIR... [-o OUT]``: compare runs from their folders alone.

Reads every run folder below the given folders (single runs and sweeps, any mix), and writes
``results.csv`` (one row per run), PNG figures (attack x defense heatmap of final accuracy
with its spread over seeds, ASR heatmap when a backdoor ran, accuracy curves per attack with
one line per defense) and one self-contained ``report.html`` with the images embedded and the
ranked worst case of each defense over attacks.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import yaml

from robustfl.config import defense_label
from robustfl.results import METRICS_FILE, SUMMARY_FILE, read_metrics

COLUMNS = [
    "attack",
    "defense",
    "dataset",
    "partition",
    "partition_param",
    "n",
    "f",
    "seed",
    "final_accuracy",
    "last5_accuracy",
    "best_accuracy",
    "asr",
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
    names = sorted(v for v in values.dropna().unique())
    return [first, *[v for v in names if v != first]] if first in names else names


def heatmap(frame: pd.DataFrame, value: str, title: str, path: Path, cmap: str) -> Path | None:
    """Attack x defense mean of ``value`` over seeds, annotated ``mean ± std``."""
    data = frame.dropna(subset=[value])
    if data.empty:
        return None
    grouped = data.groupby(["attack", "defense"])[value]
    mean, std = grouped.mean().unstack(), grouped.std(ddof=0).unstack()
    attacks, defenses = _order(data["attack"], "none"), _order(data["defense"], "mean")
    mean, std = (
        mean.reindex(index=attacks, columns=defenses),
        std.reindex(index=attacks, columns=defenses),
    )
    fig, ax = plt.subplots(figsize=(1.3 * len(defenses) + 2.5, 0.6 * len(attacks) + 1.8))
    image = ax.imshow(mean.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(defenses)), defenses, rotation=30, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    for i in range(len(attacks)):
        for j in range(len(defenses)):
            m, s = mean.iat[i, j], std.iat[i, j]
            if not math.isnan(m):
                label = f"{m:.2f}" + (f"\n±{s:.2f}" if not math.isnan(s) and s > 0 else "")
                ax.text(
                    j,
                    i,
                    label,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if (m < 0.5) == (cmap != "Reds") else "black",
                )
    ax.set_xlabel("defense")
    ax.set_ylabel("attack")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(frame: pd.DataFrame, metric: str, path: Path) -> Path | None:
    """Per attack, ``metric`` per round with one line per defense: mean and min-max band over
    seeds."""
    data = frame[frame["status"] != "failed"]
    attacks = _order(data["attack"], "none")
    series: dict[tuple[str, str], list[pd.Series]] = {}
    for row in data.itertuples():
        history = [h for h in read_metrics(row.run_dir) if h.get(metric) is not None]
        if history:
            series.setdefault((row.attack, row.defense), []).append(
                pd.Series([h[metric] for h in history], index=[h["round"] for h in history])
            )
    if not series:
        return None
    attacks = [a for a in attacks if any(key[0] == a for key in series)]
    cols = min(3, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for (a, defense), runs in sorted(series.items()):
            if a != attack:
                continue
            table = pd.concat(runs, axis=1)
            line = ax.plot(table.index, table.mean(axis=1), label=defense)[0]
            if table.shape[1] > 1:
                ax.fill_between(
                    table.index,
                    table.min(axis=1),
                    table.max(axis=1),
                    alpha=0.2,
                    color=line.get_color(),
                )
        ax.set_title(f"attack: {attack}")
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(attacks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def worst_case(frame: pd.DataFrame) -> pd.DataFrame:
    """Each defense's lowest mean final accuracy over attacks, ranked best first."""
    done = frame.dropna(subset=["final_accuracy"])
    if done.empty:
        return pd.DataFrame(columns=["defense", "worst_accuracy", "worst_attack"])
    means = done.groupby(["defense", "attack"])["final_accuracy"].mean().reset_index()
    worst = means.loc[means.groupby("defense")["final_accuracy"].idxmin()]
    worst = worst.rename(columns={"final_accuracy": "worst_accuracy", "attack": "worst_attack"})
    return worst.sort_values("worst_accuracy", ascending=False)[
        ["defense", "worst_accuracy", "worst_attack"]
    ].reset_index(drop=True)


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


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_report(roots: list[Path], out: Path) -> Path:
    """Write results.csv, the PNGs and report.html into ``out``; return the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    frame = collect(roots)
    frame.to_csv(out / "results.csv", index=False)
    figures = [
        heatmap(
            frame,
            "final_accuracy",
            "final accuracy (mean ± std over seeds)",
            out / "accuracy_heatmap.png",
            "viridis",
        ),
        heatmap(frame, "asr", "attack success rate (backdoor)", out / "asr_heatmap.png", "Reds"),
        curves(frame, "accuracy", out / "accuracy_curves.png"),
        curves(frame, "asr", out / "asr_curves.png"),
    ]
    counts = frame["status"].value_counts().to_dict()
    ranked = worst_case(frame)
    grid = worst_case_grid(frame)
    varied = frame["f"].nunique() > 1 or frame["partition_param"].nunique() > 1
    grid_parts = []
    if varied and not grid.empty:
        grid.to_csv(out / "worst_case_grid.csv", index=False)
        for defense, part in grid.groupby("defense"):
            table = part.pivot(index="f", columns="partition_param", values="best_accuracy")
            grid_parts.append(
                f"<h3>{html.escape(str(defense))}</h3>"
                + table.to_html(float_format=lambda v: f"{v:.4f}")
            )
    notes = sorted({n for folder in frame["run_dir"] for n in _data_notes(Path(folder))})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>robustfl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        "img{max-width:100%;display:block;margin:1em 0}</style></head><body>",
        "<h1>robustfl report</h1>",
        f"<p>{len(frame)} runs: "
        + ", ".join(f"{v} {html.escape(str(k))}" for k, v in sorted(counts.items()))
        + "</p>",
        "".join(f"<p><i>{html.escape(n)}</i></p>" for n in notes),
        "<h2>Worst case per defense (lowest mean final accuracy over attacks)</h2>",
        ranked.to_html(index=False, float_format=lambda v: f"{v:.4f}"),
        *(
            [
                "<h2>Worst case over attacks of the best accuracy, by f (rows) and partition "
                "parameter (columns)</h2>",
                *grid_parts,
            ]
            if grid_parts
            else []
        ),
        *[f"<h2>{html.escape(p.stem.replace('_', ' '))}</h2>{_embed(p)}" for p in figures if p],
        "<h2>All runs</h2>",
        frame.drop(columns=["run_dir"]).to_html(
            index=False, na_rep="", float_format=lambda v: f"{v:.4f}"
        ),
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.imagesRendered=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
        "document.body.dataset.imagesTotal=i.length;});</script>",
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
    print(f"report: {target.resolve()}")


if __name__ == "__main__":
    main()
