"""Hydra callbacks: a progress line after every job of a sweep, and the sweep's closing lines."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robustfl.results import SUMMARY_FILE


def collect_summaries(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``summary.json`` directly below ``sweep_dir`` (one per job), with its folder."""

    def job_order(path: Path) -> tuple[int, str]:
        head = path.parent.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, path.parent.name)

    rows = []
    for path in sorted(Path(sweep_dir).glob(f"*/{SUMMARY_FILE}"), key=job_order):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            summary = {"status": "unreadable"}
        summary["run_dir"] = str(path.parent)
        rows.append(summary)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'attack':<14} {'defense':<18} {'seed':>4}  {'status':<10} {'accuracy':>8}"]
    for row in rows:
        acc = row.get("final", {}).get("accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, float) else "-"
        lines.append(
            f"{row.get('attack', '?')!s:<14} {row.get('defense', '?')!s:<18} "
            f"{row.get('seed', '?')!s:>4}  {row.get('status', '?'):<10} {acc_text:>8}"
        )
    return "\n".join(lines)


PROGRESS_FILE = ".sweep-progress.json"  # no "_": job folders are "<num>_<attack>-vs-..."


def sweep_size(config: DictConfig) -> int | None:
    """Jobs a multirun launches: the product of the sweep sizes of its command-line overrides
    and of ``hydra.sweeper.params`` (the command line wins per key, as in Hydra's basic
    sweeper), or the sweeper's ``n_trials`` (Optuna); ``None`` when unknown."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    params = sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    arguments = {key: f"{key}={value}" for key, value in params.items()}
    parser = OverridesParser.create()
    for override in parser.parse_overrides(list(config.hydra.overrides.task)):
        arguments[override.get_key_element()] = override.input_line
    try:
        parsed = parser.parse_overrides(list(arguments.values()))
        sizes = [len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()]
    except Exception:  # a sweep Hydra expands in ways counted here only by running it
        return None
    return math.prod(sizes)


def progress_line(sweep_dir: str | Path, total: int | None) -> str:
    """``sweep: 12/252 jobs done (11 completed, 0 diverged, 1 failed)``, from the
    ``summary.json`` files on disk, so that it holds with parallel launchers."""
    counts = Counter(row.get("status") for row in collect_summaries(sweep_dir))
    done = sum(counts.values())
    of = f"/{total}" if total else ""
    return (
        f"sweep: {done}{of} jobs done ({counts['completed']} completed, "
        f"{counts['diverged']} diverged, {counts['failed']} failed)"
    )


class SweepProgress(Callback):
    """After every job of a multirun, one line: jobs done out of the total, and the failures
    so far. The total is counted when the multirun starts and kept in the sweep folder, where
    every job (in whatever process a launcher runs it) reads it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PROGRESS_FILE).write_text(json.dumps({"total": sweep_size(config)}))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            total = json.loads((sweep_dir / PROGRESS_FILE).read_text()).get("total")
        except (OSError, json.JSONDecodeError):
            total = None
        print(progress_line(sweep_dir, total), flush=True)


class SweepSummary(Callback):
    """After a multirun: print one line per job and the counts of completed, diverged and
    failed jobs; exit with status 1 when a job failed (the others' results are on disk)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_summaries(sweep_dir)
        counts = Counter(row.get("status") for row in rows)
        print(format_table(rows))
        print(
            f"sweep: {len(rows)} jobs: {counts['completed']} completed, "
            f"{counts['diverged']} diverged, {counts['failed']} failed  -> {sweep_dir}",
            flush=True,
        )
        if counts["failed"]:
            raise SystemExit(1)
