"""Run experiments from Python (notebooks, tests) with the same config tree as the CLI.

>>> from robustfl.api import run_experiment
>>> summary = run_experiment(["attack=alie", "defense=median", "fl.rounds=5"], "out/alie")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from robustfl.config import register_configs


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved-on-access config for ``overrides`` (Hydra override syntax)."""
    register_configs()
    with initialize_config_module(config_module="robustfl.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_experiment(
    overrides: Sequence[str] = (), run_dir: str | Path = "outputs/api", tracker: Any = None
) -> dict[str, Any]:
    """Compose the config, run it, write results into ``run_dir``, return the summary.

    No W&B run is made unless ``tracker`` is given (e.g. a :class:`robustfl.tracking.WandbTracker`).
    """
    from robustfl.run import run

    return run(compose_config(overrides), Path(run_dir), tracker)
