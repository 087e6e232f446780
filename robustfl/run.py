"""One experiment from start to end: build, rounds, evaluation, results on disk, tracking,
checkpoints and resuming."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from robustfl.build import build
from robustfl.checkpoint import load_checkpoint, save_checkpoint
from robustfl.config import (
    channel_label,
    defense_identity,
    defense_label,
    fill_option_names,
    option_label,
    to_container,
)
from robustfl.engine import RoundResult, Simulation, Stopwatch, rule_name, run_round
from robustfl.partition import partition_hash
from robustfl.results import SUMMARY_FILE, MetricsWriter, config_hash, write_json_atomic

log = logging.getLogger(__name__)

PHASES = ("train_s", "transmit_s", "attack_s", "aggregate_s", "eval_s")


class Tracker(Protocol):
    """Where a run's metrics go besides its folder (:class:`robustfl.tracking.WandbTracker`)."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None: ...
    def log(self, record: dict[str, Any], step: int) -> None: ...
    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None: ...


class NoTracker:
    """Metrics on disk only."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        pass

    def log(self, record: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        pass


@dataclass
class RunState:
    """What a run accumulates over rounds besides the model (saved in the checkpoint)."""

    next_round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    timers: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    worst_error: float = 0.0
    byzantine_selected: int = 0
    byzantine_seen: int = 0
    status: str = "running"
    reason: str | None = None  # why a run diverged: the rule's output, or training
    rounds_skipped: int = 0  # Poisson-sampled rounds the rule could not aggregate
    participants: list[int] = field(default_factory=list)  # clients per round

    def add(self, result: RoundResult) -> None:
        self.participants.append(result.participants)
        if result.skipped is not None:
            self.rounds_skipped += 1
            return
        error = result.robustness_error
        self.worst_error = max(self.worst_error, error) if math.isfinite(error) else math.inf
        if result.byzantine_selected is not None:
            self.byzantine_selected += result.byzantine_selected
            self.byzantine_seen += result.num_byzantine


@dataclass
class CheckpointPolicy:
    """When a run writes ``checkpoint.pt``: every ``every`` rounds, or, with ``every = 0``, at
    most once per ``seconds`` of wall time (a large model's state costs a write per round);
    always at the end unless both are 0."""

    every: int
    seconds: float
    last: float = field(default_factory=time.perf_counter)

    @property
    def enabled(self) -> bool:
        return bool(self.every or self.seconds)

    def due(self, rounds_done: int) -> bool:
        if self.every:
            return rounds_done % self.every == 0
        return bool(self.seconds) and time.perf_counter() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.perf_counter()


def run_info(cfg: DictConfig) -> dict[str, Any]:
    """The labels a run's results are grouped by."""
    return {
        "attack": option_label(cfg, "attack"),
        "defense": defense_label(cfg),
        "defense_id": defense_identity(cfg),
        "dataset": option_label(cfg, "dataset"),
        "partition": option_label(cfg, "partition"),
        "model": option_label(cfg, "model"),
        "seed": int(cfg.seed),
        "num_clients": int(cfg.fl.num_clients),
        "num_byzantine": int(cfg.fl.num_byzantine),
        "privacy": channel_label(cfg, "privacy"),
        "compression": channel_label(cfg, "compression"),
    }


def divergence_reason(result: RoundResult, rule: str, round_number: int) -> str:
    """Why a round left the model non-finite: the rule turned finite updates into a
    non-finite aggregate (the rule failed), non-finite updates went through it (an attack
    that sends them won, or local training blew up), or the server's step overflowed."""
    if result.aggregate_finite:
        return f"training diverged: the global model became non-finite in round {round_number}"
    if result.updates_finite:
        return (
            f"the rule ({rule}) returned non-finite values from finite updates in round "
            f"{round_number}"
        )
    return f"non-finite updates went through the rule ({rule}) in round {round_number}"


def failed_summary(cfg: DictConfig, reason: str, started: float) -> dict[str, Any]:
    """The summary of a run that could not complete."""
    return {
        **run_info(cfg),
        "status": "failed",
        "reason": reason,
        "config_hash": config_hash(to_container(cfg)),
        "timings": {"total_s": time.perf_counter() - started},
    }


def finished_summary(run_dir: Path, digest: str) -> dict[str, Any] | None:
    """The summary of a run that already ended (completed or diverged) with this config."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") in ("completed", "diverged") and summary.get("config_hash") == digest:
        return {**summary, "skipped": True}
    return None


def checkpoint_state(sim: Simulation, state: RunState, digest: str) -> dict[str, Any]:
    return {
        "config_hash": digest,
        "run": asdict(state),
        "global_params": sim.global_params.cpu(),
        "client_momentum": None if sim.client_momentum is None else sim.client_momentum.cpu(),
        "server": sim.server.state_dict(),
        "streams": {name: g.get_state() for name, g in sim.streams.items()},
        "attack": sim.attack.state_dict(),
        "defense": sim.defense.state_dict(),
        "privacy": sim.privacy.state_dict(),
        "compression": sim.compression.state_dict(),
    }


def restore(sim: Simulation, saved: dict[str, Any]) -> RunState:
    """Put a checkpoint's state back into ``sim``; return the run's accumulated state."""
    sim.global_params.copy_(saved["global_params"])
    if sim.client_momentum is not None:
        sim.client_momentum.copy_(saved["client_momentum"])
    sim.server.load_state_dict(saved["server"])
    for name, value in saved["streams"].items():
        sim.streams[name].set_state(value)
    sim.attack.load_state_dict(saved["attack"])
    device = sim.device
    sim.defense.load_state_dict(
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in saved["defense"].items()}
    )
    sim.privacy.load_state_dict(saved.get("privacy", {}))
    sim.compression.load_state_dict(
        {k: v.to(device) for k, v in saved.get("compression", {}).items()}
    )
    return RunState(**saved["run"])


#: Runs the rounds of a built simulation: ``runner(sim)(round_index, watch) -> RoundResult``.
Rounds = Callable[[Simulation], Callable[[int, Stopwatch], RoundResult]]


def engine_rounds(sim: Simulation) -> Callable[[int, Stopwatch], RoundResult]:
    """This project's engine: :func:`robustfl.engine.run_round` on ``sim``."""
    return lambda round_index, watch: run_round(sim, round_index, watch)


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    runner: Rounds = engine_rounds,
    engine: str = "robustfl",
    resumable: bool = True,
) -> dict[str, Any]:
    """Run one experiment; write ``metrics.jsonl``, ``summary.json`` and ``checkpoint.pt`` into
    ``run_dir``; return the summary.

    With ``resume=true`` a finished run (same config) is not run again, and an unfinished one
    continues from its checkpoint, ending with the metrics an uninterrupted run would have. A
    run whose model becomes non-finite stops with status ``"diverged"`` and keeps its metrics;
    user errors raise before any training.

    ``runner`` runs the rounds (this project's engine by default; ``robustfl.flower`` passes
    Flower's) and ``engine`` names it in the summary. With ``resumable=False`` (state that the
    checkpoint does not hold, such as momentum kept by Flower's clients) an unfinished run
    starts again from round 0.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or NoTracker()
    fill_option_names(cfg)
    plain_config = to_container(cfg)
    digest = config_hash(plain_config)
    if cfg.resume and (done := finished_summary(run_dir, digest)) is not None:
        return done
    sim = build(cfg)
    state = RunState()
    saved = load_checkpoint(run_dir) if cfg.resume else None
    if saved is not None and not resumable:
        log.warning(
            "%s: the %s engine cannot resume mid-run; starting from round 1", run_dir, engine
        )
        saved = None
    if saved is not None and saved.get("config_hash") == digest and "streams" in saved:
        state = restore(sim, saved)
        log.info("resuming %s at round %d", run_dir, state.next_round + 1)

    tracker.start(plain_config, run_dir)
    writer = MetricsWriter(run_dir)
    for record in state.history:  # a resumed run rewrites exactly the checkpointed rounds
        writer.write(record)
        tracker.log(record, step=record["round"])
    # total_s counts this process from its start (build included) plus earlier processes'.
    offset = started - state.timers.get("total_s", 0.0)
    watch = Stopwatch(state.timers)
    rounds, every = cfg.fl.rounds, cfg.fl.eval_every
    policy = CheckpointPolicy(cfg.checkpoint_every, cfg.checkpoint_seconds)
    progress = _progress(cfg, state.next_round)
    run_one = runner(sim)
    try:
        for r in range(state.next_round, rounds):
            result = run_one(r, watch)
            state.next_round = r + 1
            state.add(result)
            if not result.finite or (r + 1) % every == 0 or r + 1 == rounds:
                with watch("eval_s"):
                    metrics = sim.evaluation(sim.global_params) if result.finite else {}
                record = {
                    "round": r + 1,
                    "accuracy": metrics.get("accuracy", math.nan),
                    "loss": metrics.get("loss", math.nan),
                    **{k: metrics[k] for k in ("asr", "trigger_rate") if k in metrics},
                    "robustness_error": result.robustness_error,
                    "byzantine_selected": result.byzantine_selected,
                    "num_byzantine": result.num_byzantine,
                    "participants": result.participants,
                    "rounds_skipped": state.rounds_skipped,
                    **_channel_metrics(sim, r + 1),
                    **{f"time_{k}": v for k, v in state.timers.items() if k != "total_s"},
                    "elapsed_s": time.perf_counter() - offset,
                }
                writer.write(record)
                state.history.append(record)
                tracker.log(record, step=r + 1)
                progress.set_postfix(acc=f"{record['accuracy']:.3f}")
                if not math.isfinite(record["loss"]):
                    state.status = "diverged"
                    state.reason = divergence_reason(result, rule_name(sim.defense), r + 1)
                    log.warning("%s; stopping", state.reason)
            progress.update(1)
            if state.status == "diverged":
                break
            if r + 1 < rounds and policy.due(r + 1):
                state.timers["total_s"] = time.perf_counter() - offset
                save_checkpoint(run_dir, checkpoint_state(sim, state, digest))
                policy.saved()
    finally:
        writer.close()
        progress.close()

    if state.status == "running":
        state.status = "completed"
    state.timers["total_s"] = time.perf_counter() - offset
    if policy.enabled:
        save_checkpoint(run_dir, checkpoint_state(sim, state, digest))
    summary = {**_summary(cfg, sim, digest, state), "engine": engine}
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    tracker.finish(summary, state.history)
    return summary


def _channel_metrics(sim: Simulation, rounds: int) -> dict[str, float]:
    """Privacy spent after ``rounds`` rounds and bits per message, for a run that uses them."""
    metrics: dict[str, float] = {}
    if sim.privacy.active:
        metrics["epsilon"] = sim.privacy.epsilon(rounds)
    if sim.compression.active:
        metrics["bits_per_client"] = sim.compression.bits_per_message()
    return metrics


def _summary(cfg: DictConfig, sim: Simulation, digest: str, state: RunState) -> dict[str, Any]:
    finite = [h for h in state.history if math.isfinite(h["accuracy"])]
    keys = ("round", "accuracy", "loss", "asr", "trigger_rate")
    final = {k: finite[-1][k] for k in keys if finite and k in finite[-1]}
    best = {"accuracy": max((h["accuracy"] for h in finite), default=math.nan)}
    for key in ("accuracy", "asr", "trigger_rate"):  # the bucketing paper: the last 5 evaluations
        if finite and key in finite[-1]:
            final[f"{key}_last5_mean"] = sum(h[key] for h in finite[-5:]) / len(finite[-5:])
    if sim.evaluation.backdoor is not None and sim.attack.targeted:
        best["asr"] = max((h["asr"] for h in finite), default=math.nan)  # the attacker's best
    return {
        **run_info(cfg),
        "status": state.status,
        **({"reason": state.reason} if state.reason else {}),
        "rounds_completed": state.next_round,
        "rounds_skipped": state.rounds_skipped,
        "participants": {
            "sampling": sim.federation.sampling,
            "mean": sum(state.participants) / max(len(state.participants), 1),
            "min": min(state.participants, default=0),
            "max": max(state.participants, default=0),
        },
        "final": final,
        "best": best,
        "worst_robustness_error": state.worst_error,
        "byzantine_selected_share": (
            state.byzantine_selected / state.byzantine_seen if state.byzantine_seen else None
        ),
        "byzantine_ids": sim.federation.byzantine_ids.tolist(),
        "partition_hash": partition_hash(sim.parts),
        "config_hash": digest,
        "num_parameters": sim.trainer.layout.d,
        "privacy_mechanism": {
            **sim.privacy.describe(),
            **({"epsilon": sim.privacy.epsilon(state.next_round)} if sim.privacy.active else {}),
            **_scope(sim),
        },
        "compression_scheme": {
            **sim.compression.describe(),
            "compression_ratio": 32 * sim.trainer.layout.d / sim.compression.bits_per_message(),
        },
        "device": str(sim.device),
        "data_notes": sim.data_notes,
        "timings": {k: round(v, 6) for k, v in state.timers.items()},
    }


def _scope(sim: Simulation) -> dict[str, Any]:
    """Whether the run's epsilon covers its rule (:meth:`robustfl.privacy.Privacy.scope`)."""
    if not sim.privacy.active:
        return {}
    covers, scope = sim.privacy.scope(sim.defense)
    return {"epsilon_covers_rule": covers, "scope": scope}


def _progress(cfg: DictConfig, initial: int):
    from tqdm.auto import tqdm

    label = f"{option_label(cfg, 'attack')} vs {option_label(cfg, 'defense')}"
    return tqdm(
        total=cfg.fl.rounds,
        initial=initial,
        desc=label,
        unit="round",
        leave=False,
        disable=True if not cfg.get("progress", True) else None,
    )
