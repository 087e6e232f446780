"""The ``robustfl`` command: a Hydra app around :func:`robustfl.engine.run`.

Failure isolation: a job that fails (invalid value, missing data, an exception) writes
``summary.json`` with ``status: failed`` and the reason. A single run then exits with an
error (a one-line message for user errors, a traceback for bugs); in a multirun the sweep
goes on with the other jobs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from robustfl.config import register_configs
from robustfl.errors import ConfigError, DataError
from robustfl.results import SUMMARY_FILE, write_json_atomic
from robustfl.run import failed_summary, run
from robustfl.tracking import WandbTracker

log = logging.getLogger("robustfl")

register_configs()


def _result_line(summary: dict[str, Any], run_dir: Path) -> str:
    head = f"{summary['attack']} vs {summary['defense']} (seed {summary['seed']})"
    if summary["status"] == "failed":
        return f"{head}: FAILED - {summary['reason'].splitlines()[0]}  [{run_dir}]"
    final = summary.get("final", {})
    acc = final.get("accuracy")
    text = f"{head}: accuracy {acc:.4f}" if acc is not None else f"{head}: no evaluation"
    if "asr" in final:
        text += f", ASR {final['asr']:.4f}"
    if summary.get("skipped"):
        text += " (already finished: skipped)"
    text += (
        f" after {summary['rounds_completed']} rounds, {summary['timings']['total_s']:.1f} s"
        f" [{summary['status']}]  -> {run_dir}"
    )
    return text


def execute(
    cfg: DictConfig,
    run_dir: Path,
    multirun: bool,
    group: str | None = None,
    run_job: Callable[[DictConfig, Path, WandbTracker], dict] = run,
    command: str = "robustfl",
) -> dict:
    """Run one job with ``run_job`` (this project's engine by default) and record its outcome
    whatever happens; see the module docstring."""
    started = time.perf_counter()
    tracker = WandbTracker(cfg.tracker, group=group)
    try:
        summary = run_job(cfg, run_dir, tracker)
    except (ConfigError, DataError) as error:
        summary = failed_summary(cfg, str(error), started)
        _record_failure(summary, run_dir, tracker)
        if not multirun:
            print(f"{command}: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    except Exception as error:
        summary = failed_summary(cfg, f"{type(error).__name__}: {error}", started)
        summary["traceback"] = traceback.format_exc()
        _record_failure(summary, run_dir, tracker)
        if not multirun:
            raise
        log.error("job failed: %s\n%s", summary["reason"], summary["traceback"])
    print(_result_line(summary, run_dir), flush=True)
    return summary


def _record_failure(summary: dict, run_dir: Path, tracker: WandbTracker) -> None:
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    try:
        tracker.fail(summary)
    except Exception:  # the failure record on disk matters more than the W&B one
        log.exception("could not mark the W&B run failed")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """One job. Returns the final clean accuracy (NaN when there is none), the objective that
    optimizing sweepers such as Optuna minimize or maximize."""
    return hydra_job(cfg)


def hydra_job(
    cfg: DictConfig,
    run_job: Callable[[DictConfig, Path, WandbTracker], dict] = run,
    command: str = "robustfl",
) -> float:
    """The job of a Hydra app (``robustfl``, ``robustfl-flower``): :func:`execute` in the run
    folder Hydra chose, grouped per sweep; returns the final clean accuracy or NaN."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    run_dir = Path(hydra_cfg.runtime.output_dir)
    summary = execute(cfg, run_dir, multirun, group, run_job, command)
    accuracy = summary.get("final", {}).get("accuracy")
    return float(accuracy) if accuracy is not None else math.nan


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
