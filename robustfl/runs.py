"""Run folders into one table: what ``robustfl-report`` reads, and what it refuses to count.

A run folder needs only its own files: ``summary.json`` (written when the run ended),
``metrics.jsonl`` (appended while it runs) and Hydra's ``.hydra/config.yaml``. A folder whose
files cannot be read (a ``summary.json`` cut short by a partial copy or a full disk), or
whose summary contradicts itself (``completed`` without a finite final accuracy), is listed
as a problem with its reason and left out of the table, so that one bad folder neither stops
the report nor moves a statistic. Runs are identified by what their defense computes (its
targets and parameters, :func:`robustfl.config.defense_identity`), not by its label alone:
two rules that share a label within one setting are split into ``label [digest]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from robustfl.config import channel_label, defense_identity, defense_label, register_configs
from robustfl.leaderboard import SETTING, fill_settings
from robustfl.results import METRICS_FILE, SUMMARY_FILE, read_metrics

COLUMNS = [
    "attack",
    "defense",
    "defense_id",
    "dataset",
    "partition",
    "partition_param",
    "model",
    "n",
    "f",
    "privacy",
    "compression",
    "engine",
    "seed",
    "final_accuracy",
    "last5_accuracy",
    "best_accuracy",
    "asr",
    "asr_last5",
    "trigger_rate",
    "worst_robustness_error",
    "byzantine_selected_share",
    "epsilon",
    "epsilon_covers_rule",
    "bits_per_client",
    "status",
    "reason",
    "run_dir",
]


class UnreadableRun(ValueError):
    """A run folder whose files cannot be read or contradict each other; the message says
    which file and why."""


@dataclass
class Collected:
    """The runs that count (``frame``, one row each, :data:`COLUMNS`), the folders left out
    (``problems``: ``run_dir``, ``problem``) and warnings about labels (shared by different
    rules)."""

    frame: pd.DataFrame
    problems: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


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


def _mean_last(values: list[float], k: int) -> float | None:
    return sum(values[-k:]) / len(values[-k:]) if values else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UnreadableRun(f"{path.name} is not valid JSON (cut short?): {error}") from None
    if not isinstance(data, dict):
        raise UnreadableRun(f"{path.name} holds {type(data).__name__}, not an object")
    return data


def _identity(config: dict[str, Any]) -> str | None:
    """The defense digest of a saved (unresolved) Hydra config; None if it cannot resolve."""
    if not config.get("defense"):
        return None
    register_configs()  # the resolvers the saved config may use
    try:
        return defense_identity(OmegaConf.create(config))
    except Exception:  # an interpolation that needs what only the run had (an env variable)
        return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def run_row(folder: Path) -> dict[str, Any]:
    """One row of ``results.csv`` for a run folder, finished or not; raises
    :class:`UnreadableRun` for a folder that cannot count."""
    config: dict[str, Any] = {}
    config_file = folder / ".hydra" / "config.yaml"
    if config_file.exists():
        try:
            config = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as error:
            raise UnreadableRun(f".hydra/config.yaml is not valid YAML: {error}") from None
    summary = _read_json(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).exists() else {}
    fl = config.get("fl", {})
    partition = config.get("partition", {}) or {}
    history = read_metrics(folder)
    final = summary.get("final", {}) or {}
    accuracies = [h["accuracy"] for h in history if _number(h.get("accuracy")) is not None]
    asrs = [h["asr"] for h in history if _number(h.get("asr")) is not None]
    triggers = [h["trigger_rate"] for h in history if _number(h.get("trigger_rate")) is not None]
    status = summary.get("status", "unfinished")
    final_accuracy = final.get("accuracy", accuracies[-1] if accuracies else None)
    if status == "completed" and _number(final_accuracy) is None:
        raise UnreadableRun(
            f"summary.json says completed but its final accuracy is {final_accuracy!r}"
        )
    return {
        "attack": summary.get("attack") or config.get("attack", {}).get("name"),
        # The summary's label names the pre-aggregators too.
        "defense": summary.get("defense")
        or (defense_label(config) if config.get("defense") else None),
        "defense_id": summary.get("defense_id") or _identity(config),
        "dataset": summary.get("dataset") or config.get("dataset", {}).get("name"),
        "partition": summary.get("partition") or partition.get("name"),
        "partition_param": _partition_param(partition),
        "n": summary.get("num_clients", fl.get("num_clients")),
        "f": summary.get("num_byzantine", fl.get("num_byzantine")),
        "seed": summary.get("seed", config.get("seed")),
        "final_accuracy": _number(final_accuracy),
        "last5_accuracy": final.get("accuracy_last5_mean", _mean_last(accuracies, 5)),
        "best_accuracy": (summary.get("best", {}) or {}).get(
            "accuracy", max(accuracies) if accuracies else None
        ),
        "asr": _number(final.get("asr", asrs[-1] if asrs else None)),
        "asr_last5": final.get("asr_last5_mean", _mean_last(asrs, 5)),
        "trigger_rate": _number(final.get("trigger_rate", triggers[-1] if triggers else None)),
        "privacy": summary.get("privacy") or channel_label(config, "privacy"),
        "compression": summary.get("compression") or channel_label(config, "compression"),
        "epsilon": (summary.get("privacy_mechanism", {}) or {}).get("epsilon"),
        "epsilon_covers_rule": (summary.get("privacy_mechanism", {}) or {}).get(
            "epsilon_covers_rule"
        ),
        "bits_per_client": (summary.get("compression_scheme", {}) or {}).get("bits_per_message"),
        "worst_robustness_error": summary.get("worst_robustness_error"),
        "byzantine_selected_share": summary.get("byzantine_selected_share"),
        "model": summary.get("model") or config.get("model", {}).get("name"),
        # runs of another engine (Flower's) form settings of their own; this project's: "-"
        "engine": None if summary.get("engine", "robustfl") == "robustfl" else summary["engine"],
        "status": status,
        "reason": summary.get("reason"),
        "run_dir": str(folder),
    }


def split_shared_labels(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Within each setting, a defense label that covers several rule identities becomes
    ``label [digest]`` for each, so that different rules are never pooled; returns the
    relabelled frame and one warning per such label."""
    frame = frame.copy()
    warnings = []
    keyed = fill_settings(frame)
    known = keyed["defense_id"].notna()
    groups = keyed[known].groupby([*SETTING, "defense"])["defense_id"]
    for key, ids in groups:
        distinct = sorted(ids.unique())
        if len(distinct) < 2:
            continue
        label = key[-1]
        rows = ids.index
        frame.loc[rows, "defense"] = [f"{label} [{digest[:4]}]" for digest in ids]
        setting = ", ".join(str(v) for v in key[:-1] if v not in ("-", None))
        warnings.append(
            f"defense label {label!r} names {len(distinct)} different rules in setting "
            f"({setting}): shown apart as "
            + ", ".join(f"{label} [{digest[:4]}]" for digest in distinct)
            + "; give each its own 'name' in its YAML."
        )
    return frame, warnings


def repeated_seeds(frame: pd.DataFrame) -> list[str]:
    """One warning per (setting, attack, defense, seed) held by more than one run folder: the
    statistics average such runs as one seed (a rerun with other rounds, or the same folder
    copied twice), which the reader should know."""
    keyed = fill_settings(frame)
    warnings = []
    for key, part in keyed.groupby([*SETTING, "attack", "defense", "seed"], dropna=False):
        if len(part) < 2:
            continue
        *setting, attack, defense, seed = key
        where = ", ".join(str(v) for v in setting if v not in ("-", None))
        warnings.append(
            f"{len(part)} runs of {attack} vs {defense}, seed {seed} ({where}) are averaged as "
            f"one seed: {', '.join(sorted(part['run_dir']))}; remove or move the ones that "
            "should not count."
        )
    return warnings


def collect(roots: list[Path]) -> Collected:
    """Every run folder below ``roots``: the runs that count, and the folders left out."""
    rows, problems = [], []
    for folder in find_runs(roots):
        try:
            rows.append(run_row(folder))
        except (UnreadableRun, OSError) as error:
            problems.append({"run_dir": str(folder), "problem": str(error)})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("attack", "defense", "dataset", "partition"):
        frame[column] = frame[column].fillna("unknown").astype(str)
    frame, warnings = split_shared_labels(frame)
    warnings += repeated_seeds(frame)
    return Collected(frame, pd.DataFrame(problems, columns=["run_dir", "problem"]), warnings)
