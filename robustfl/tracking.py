"""Weights & Biases logging (the ``tracker`` config group).

``tracker.mode``: ``auto`` (online when an API key is configured, otherwise offline, so a new
user never sees a login prompt), ``online``, ``offline`` or ``disabled``. The ``WANDB_MODE``
environment variable, when set, overrides the config (no mode is then passed to
``wandb.init``). In offline mode nothing touches the network: W&B's error reporting is turned
off and its directories are placed under the run folder, unless the user set them.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from robustfl.config import defense_label

log = logging.getLogger(__name__)

#: Environment variables this module sets per run (and may overwrite on the next run in the
#: same process); any the user set before are left alone.
_OWNED_ENV: set[str] = set()
_DIR_VARS = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": "cache",
    "WANDB_DATA_DIR": "data",
    "WANDB_CONFIG_DIR": "config",
}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fl": {"lr": 0.1}}`` -> ``{"fl.lr": 0.1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def has_api_key() -> bool:
    """True when W&B could log in without asking: ``WANDB_API_KEY`` or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        return netrc.netrc().authenticators(host.split("/")[0]) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(configured: str) -> str | None:
    """The mode to pass to ``wandb.init``; ``None`` lets ``WANDB_MODE`` decide."""
    if os.environ.get("WANDB_MODE"):
        return None
    if configured == "auto":
        return "online" if has_api_key() else "offline"
    return configured


def effective_mode(configured: str) -> str:
    """The mode a run will actually use (``WANDB_MODE`` first, then the config)."""
    return os.environ.get("WANDB_MODE") or resolve_mode(configured) or "offline"


def _own_env(name: str, value: str) -> None:
    if name in os.environ and name not in _OWNED_ENV:
        return  # the user's setting wins
    os.environ[name] = value
    _OWNED_ENV.add(name)


class WandbTracker:
    """One W&B run per experiment; :meth:`finish` always closes it (so the next job of a sweep
    in the same process gets a run of its own).

    Args:
        settings: the ``tracker`` config node (mode, project, entity, group, tags, name,
            job_type).
        group: the default group (one per sweep) when ``settings.group`` is null.
    """

    def __init__(self, settings: Any, group: str | None = None) -> None:
        self.settings = settings
        self.default_group = group
        self.run = None
        self._last_step = 0

    def start(self, config: dict[str, Any], run_dir: str | Path) -> None:
        """Open the W&B run. A W&B failure is logged and the run goes on without it: the
        results on disk are the record that must not be lost."""
        try:
            self._start(config, Path(run_dir))
        except Exception as error:
            log.warning("W&B logging disabled for this run: %s: %s", type(error).__name__, error)
            self.run = None

    def _start(self, config: dict[str, Any], run_dir: Path) -> None:
        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # an empty value is an error inside wandb
        mode = str(getattr(self.settings.mode, "value", self.settings.mode))
        if effective_mode(mode) == "disabled":
            return
        _own_env("WANDB_ERROR_REPORTING", "false")
        _own_env("WANDB_SILENT", "true")
        for var, sub in _DIR_VARS.items():
            path = run_dir / "wandb_files" / sub if sub else run_dir
            path.mkdir(parents=True, exist_ok=True)
            _own_env(var, str(path))
        import wandb

        attack, defense = config["attack"].get("name"), defense_label(config)
        seed = config.get("seed")
        flat = flatten(config)
        flat.update(
            {
                "attack": attack,
                "defense": defense,
                "dataset": config["dataset"].get("name"),
                "partition": config["partition"].get("name"),
            }
        )
        kwargs: dict[str, Any] = {}
        resolved = resolve_mode(mode)
        if resolved is not None:
            kwargs["mode"] = resolved
        self.run = wandb.init(
            project=self.settings.project,
            entity=self.settings.entity,
            group=self.settings.group or self.default_group,
            name=self.settings.name or f"{attack}-vs-{defense}-s{seed}",
            job_type=self.settings.job_type,
            tags=[str(t) for t in (self.settings.tags or [])]
            + [f"attack:{attack}", f"defense:{defense}", f"dataset:{flat['dataset']}"],
            config=flat,
            dir=str(run_dir),
            reinit="finish_previous",
            **kwargs,
        )

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if v is not None}, step=step)
            self._last_step = step

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if self.run is None:
            return
        import wandb

        try:
            self.run.summary.update(
                flatten({k: v for k, v in summary.items() if k not in ("data_notes",)})
            )
            if history:
                # One step after the last round, so the per-round history stays exactly
                # the rows of metrics.jsonl.
                columns = sorted({k for h in history for k in h})
                rows = [[h.get(c) for c in columns] for h in history]
                media: dict[str, Any] = {"metrics_table": wandb.Table(columns=columns, data=rows)}
                figure = _accuracy_figure(history, summary)
                if figure is not None:
                    media["accuracy_curve"] = wandb.Image(figure)
                    import matplotlib.pyplot as plt

                    plt.close(figure)
                self.run.log(media, step=self._last_step + 1)
        finally:
            self.run.finish(exit_code=0 if summary.get("status") != "failed" else 1)
            self.run = None

    def fail(self, summary: dict[str, Any]) -> None:
        """Mark the W&B run failed (the run itself raised)."""
        if self.run is not None:
            self.run.summary.update({"status": "failed", "reason": summary.get("reason", "")})
            self.run.finish(exit_code=1)
            self.run = None


def _accuracy_figure(history: list[dict[str, Any]], summary: dict[str, Any]):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    rounds = [h["round"] for h in history]
    ax.plot(rounds, [h["accuracy"] for h in history], label="accuracy")
    if any("asr" in h for h in history):
        ax.plot(rounds, [h.get("asr") for h in history], label="ASR")
    ax.set_xlabel("round")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary.get('attack')} vs {summary.get('defense')}")
    ax.legend()
    fig.tight_layout()
    return fig
