"""Hydra callbacks: the closing lines of a sweep."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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
