"""The ``robustfl-flower`` command: ``robustfl``'s config and run folder, with the rounds run
by Flower's simulation engine (one virtual SuperNode per client, Ray actors training them).

    robustfl-flower attack=alie defense=median
    robustfl-flower -m defense=median,krum seed=0,1,2

Optional settings (prefix them with ``+`` on the command line; they are not part of robustfl's
config): ``+flower.client_cpus=1`` (CPU cores per client app, and its torch threads unless
``threads`` is set; ``fl.num_clients`` nodes share the machine's), ``+flower.backend_cpus`` (cores Ray may use; default: all),
``+flower.timeout=600`` (seconds to wait for a round's replies).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import hydra
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from omegaconf import DictConfig

from robustfl.cli import hydra_job
from robustfl.config import fill_option_names, register_configs, to_container
from robustfl.flower.app import check_supported, client_app, serve
from robustfl.results import config_hash
from robustfl.run import finished_summary

register_configs()


def backend_config(cfg: DictConfig) -> dict[str, Any]:
    """Ray's resources for the simulation: ``+flower.backend_cpus`` cores in all (default: the
    machine's), ``+flower.client_cpus`` per client app (default 1)."""
    flower = cfg.get("flower") or {}
    cpus = int(flower.get("backend_cpus") or os.cpu_count() or 1)
    return {
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": False},
        "client_resources": {"num_cpus": float(flower.get("client_cpus", 1)), "num_gpus": 0.0},
    }


def run_on_flower(cfg: DictConfig, run_dir: str | Path, tracker: Any = None) -> dict[str, Any]:
    """Run ``cfg`` through Flower's simulation engine into ``run_dir``; the summary."""
    check_supported(cfg)
    fill_option_names(cfg)
    if cfg.resume and (done := finished_summary(Path(run_dir), config_hash(to_container(cfg)))):
        return done
    flower = cfg.get("flower") or {}
    timeout = float(flower.get("timeout", 600.0))
    client_threads = max(1, math.floor(float(flower.get("client_cpus", 1))))
    outcome: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        outcome["summary"] = serve(
            grid, cfg, str(run_dir), tracker, timeout=timeout, client_threads=client_threads
        )

    run_simulation(
        server_app=app,
        client_app=client_app,
        num_supernodes=int(cfg.fl.num_clients),
        backend_config=backend_config(cfg),
    )
    if "summary" not in outcome:
        raise RuntimeError("Flower's simulation ended without a result (see its log above).")
    return outcome["summary"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """One job through Flower; returns the final clean accuracy (NaN when there is none)."""
    return hydra_job(cfg, run_on_flower, "robustfl-flower")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
