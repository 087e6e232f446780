"""The federated simulation: set-up from config, then rounds exactly as in DESIGN.md.

A round: sample the participating clients; every one trains locally from the global model
(Byzantine clients on their possibly poisoned data), all at once; the attack replaces the
Byzantine rows of the update matrix; the defense aggregates; the server steps. Every
``eval_every`` rounds (and after the last) the global model is evaluated and one line goes
to ``metrics.jsonl``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from attacks.base import Attack, overrides
from defenses.base import Defense, build_defense
from robustfl.checkpoint import load_checkpoint, save_checkpoint
from robustfl.config import (
    clients_per_round,
    defense_label,
    fill_option_names,
    instantiate_option,
    option_label,
    to_container,
    validate,
)
from robustfl.context import RoundContext
from robustfl.data import Dataset
from robustfl.errors import ConfigError
from robustfl.models import init_model
from robustfl.partition import partition_hash
from robustfl.results import SUMMARY_FILE, MetricsWriter, config_hash, write_json_atomic
from robustfl.seeding import numpy_generator, stream_seed, torch_generator
from robustfl.server import ServerOptimizer
from robustfl.training import ClientData, LocalTrainer, ParamLayout, evaluate, sample_batch_indices

log = logging.getLogger(__name__)

TIMERS = ("train_s", "attack_s", "aggregate_s", "eval_s")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda is invalid here: no CUDA device is available. Use "
            "device=auto or device=cpu."
        )
    return torch.device(name)


@dataclass
class Simulation:
    """Everything a run needs, built by :func:`setup` before the first round."""

    cfg: DictConfig
    device: torch.device
    dataset: Dataset
    data: ClientData
    parts: list[np.ndarray]
    byzantine_ids: Tensor  # (f,) sorted client ids
    is_byzantine: Tensor  # (K,) bool
    model: nn.Module
    layout: ParamLayout
    trainer: LocalTrainer
    attack: Attack
    defense: Defense
    backdoor: tuple[Tensor, Tensor] | None
    root_data: ClientData | None  # the server's clean root set, for defenses that need it
    # State that evolves over rounds (what a checkpoint holds).
    global_params: Tensor
    client_momentum: Tensor | None
    server: ServerOptimizer
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    updates: Tensor | None = None  # the (n, d) update matrix, reused every round

    @property
    def fl(self) -> DictConfig:
        return self.cfg.fl


def setup(cfg: DictConfig) -> Simulation:
    """Validate ``cfg`` and build data, partition, model, attack and defense.

    Every user error surfaces here, as :class:`ConfigError` or
    :class:`~robustfl.errors.DataError`, before any training.
    """
    validate(cfg)
    fl = cfg.fl
    device = resolve_device(str(getattr(cfg.device, "value", cfg.device)))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    attack: Attack = instantiate_option(cfg.attack)
    defense = build_defense(cfg.defense)
    if not isinstance(attack, Attack):
        raise ConfigError(
            f"attack._target_={cfg.attack._target_} did not build an attacks.base.Attack."
        )
    per_round = clients_per_round(fl)
    if fl.num_byzantine == 0 and (
        overrides(attack, "poison_data") or overrides(attack, "poison_gradients")
    ):
        raise ConfigError(
            f"attack={option_label(cfg, 'attack')} is configured but fl.num_byzantine=0, so no "
            "client would run it: set fl.num_byzantine >= 1, or use attack=none for the "
            "attack-free baseline."
        )
    attack.check(per_round, min(fl.num_byzantine, per_round))
    defense.check(per_round)

    dataset: Dataset = instantiate_option(cfg.dataset, seed=cfg.seed)
    byz_gen = torch_generator(cfg.seed, "byzantine")
    byzantine_ids = (
        torch.randperm(fl.num_clients, generator=byz_gen)[: fl.num_byzantine].sort().values
    )
    is_byzantine = torch.zeros(fl.num_clients, dtype=torch.bool)
    is_byzantine[byzantine_ids] = True

    partitioner = instantiate_option(cfg.partition, _partial_=True)
    # Optional facts a partition may ask for by naming them as parameters.
    offered = {"min_size": fl.batch_size, "byzantine": is_byzantine.numpy()}
    accepted = inspect.signature(partitioner.func).parameters
    extra = {k: v for k, v in offered.items() if k in accepted and k not in partitioner.keywords}
    parts = partitioner(
        dataset.y_train.numpy(), fl.num_clients, numpy_generator(cfg.seed, "partition"), **extra
    )
    smallest = min(len(p) for p in parts)
    if smallest < fl.batch_size:
        raise ConfigError(
            f"partition={cfg.partition.name} leaves a client with {smallest} samples, fewer than "
            f"fl.batch_size={fl.batch_size}: every client needs at least one batch. Lower "
            "fl.batch_size or fl.num_clients, or change the partition's parameters."
        )

    attack.bind(dataset.num_classes, dataset.input_shape, float(dataset.x_train.max()))
    poison_gen = torch_generator(cfg.seed, "poison_data")
    client_parts = []
    for client, idx in enumerate(parts):
        x, y = dataset.x_train[idx], dataset.y_train[idx]
        if is_byzantine[client]:
            x, y = attack.poison_data(x.clone(), y.clone(), poison_gen)
        client_parts.append((x, y))
    data = ClientData.from_parts(client_parts).to(device)

    builder = instantiate_option(cfg.model, _partial_=True)
    model = init_model(
        builder, dataset.input_shape, dataset.num_classes, stream_seed(cfg.seed, "model")
    ).to(device)
    layout = ParamLayout.of(model)
    trainer = LocalTrainer(
        model, layout, fl.lr, fl.momentum, fl.weight_decay, fl.chunk_size, fl.dampening
    )
    backdoor = attack.backdoor_test_set(dataset.x_test, dataset.y_test)
    if backdoor is not None:
        backdoor = (backdoor[0].to(device), backdoor[1].to(device))
    dataset.x_test, dataset.y_test = dataset.x_test.to(device), dataset.y_test.to(device)

    root_data = None
    if defense.root_size is not None:
        root_size = min(int(defense.root_size), len(dataset.y_train))
        if root_size < fl.batch_size:
            raise ConfigError(
                f"defense.root_size={root_size} is smaller than "
                f"fl.batch_size={fl.batch_size}: the server needs one batch."
            )
        root_idx = torch.randperm(len(dataset.y_train), generator=torch_generator(cfg.seed, "root"))
        root_idx = root_idx[:root_size]
        root_data = ClientData.from_parts(
            [(dataset.x_train[root_idx], dataset.y_train[root_idx])]
        ).to(device)

    global_params = layout.flatten(model)
    server = ServerOptimizer(
        global_params, fl.server_lr, fl.server_momentum, fl.server_weight_decay
    )
    return Simulation(
        cfg=cfg,
        device=device,
        dataset=dataset,
        data=data,
        parts=parts,
        byzantine_ids=byzantine_ids,
        is_byzantine=is_byzantine,
        model=model,
        layout=layout,
        trainer=trainer,
        attack=attack,
        defense=defense,
        backdoor=backdoor,
        root_data=root_data,
        global_params=global_params,
        client_momentum=torch.zeros(fl.num_clients, layout.d, device=device)
        if fl.momentum
        else None,
        server=server,
        generators={
            name: torch_generator(cfg.seed, name)
            for name in ("sampling", "batches", "attack", "defense", "server")
        },
    )


@dataclass
class RoundResult:
    aggregate_finite: bool
    robustness_error: float
    byzantine_selected: int | None
    num_byzantine: int


def participants(sim: Simulation) -> Tensor:
    """Sorted ids of this round's clients (all of them unless ``clients_per_round`` < K)."""
    fl = sim.fl
    per_round = clients_per_round(fl)
    if per_round == fl.num_clients:
        return torch.arange(fl.num_clients)
    chosen = torch.randperm(fl.num_clients, generator=sim.generators["sampling"])
    return chosen[:per_round].sort().values


def server_update(sim: Simulation) -> Tensor:
    """The server's own ``(d,)`` update: local training on its root set from the global model,
    with the clients' settings (no momentum), for defenses such as FLTrust."""
    fl = sim.fl
    if sim.root_data is None:
        raise RuntimeError(
            f"{type(sim.defense).__name__} called ctx.server_update() but declares no root_size: "
            "set the class attribute root_size (the server's clean root set, in samples)."
        )
    batches = sample_batch_indices(
        sim.root_data,
        torch.zeros(1, dtype=torch.long),
        fl.local_steps,
        fl.batch_size,
        sim.generators["server"],
    )
    return sim.trainer.train(sim.global_params, sim.root_data.x, sim.root_data.y, batches)[0]


def run_round(sim: Simulation, round_index: int, timers: dict[str, float]) -> RoundResult:
    """One round; updates ``sim``'s global model and buffers in place, adds to ``timers``."""
    fl = sim.fl
    clients = participants(sim)
    byz_rows = torch.nonzero(sim.is_byzantine[clients]).flatten()
    honest_rows = torch.nonzero(~sim.is_byzantine[clients]).flatten()

    tic = time.perf_counter()
    batches = sample_batch_indices(
        sim.data, clients, fl.local_steps, fl.batch_size, sim.generators["batches"]
    )
    everyone = len(clients) == fl.num_clients
    momentum_rows = sim.client_momentum
    if momentum_rows is not None and not everyone:
        # gathered (index_select: faster than momentum_rows[...]), scattered back below
        momentum_rows = momentum_rows.index_select(0, clients.to(sim.device))
    if sim.updates is None or len(sim.updates) != len(clients):
        sim.updates = torch.empty(len(clients), sim.layout.d, device=sim.device)
    updates = sim.trainer.train(
        sim.global_params, sim.data.x, sim.data.y, batches, momentum_rows, out=sim.updates
    )
    if momentum_rows is not None and not everyone:
        sim.client_momentum[clients.to(sim.device)] = momentum_rows
    # The honest mean as a matrix-vector product: no copy of the honest rows.
    honest_weights = torch.zeros(len(clients), dtype=updates.dtype, device=sim.device)
    honest_weights[honest_rows.to(sim.device)] = 1.0 / max(len(honest_rows), 1)
    honest_mean = honest_weights @ updates
    timers["train_s"] += time.perf_counter() - tic

    ctx = RoundContext(
        round=round_index,
        defense=sim.defense,
        global_params=sim.global_params,
        generator=sim.generators["attack"],
        num_clients=len(clients),
        num_byzantine=len(byz_rows),
        byzantine_rows=byz_rows,
        sample_counts=sim.data.sizes[clients.to(sim.device)].to(updates.dtype),
        client_ids=clients,
        defense_generator=sim.generators["defense"],
        server_update=lambda: server_update(sim),
    )
    # The defense learns the round first, so an adaptive attack can simulate it as it will run.
    tic = time.perf_counter()
    sim.defense.prepare(ctx)
    timers["aggregate_s"] += time.perf_counter() - tic

    tic = time.perf_counter()
    if len(byz_rows) and overrides(sim.attack, "poison_gradients"):
        dev_byz, dev_honest = byz_rows.to(sim.device), honest_rows.to(sim.device)
        # Attacks work on pseudo-gradients, minus the updates (attacks/base.py). index_select
        # copies the rows (half the time of updates[rows]); the negation is in place.
        honest = updates.index_select(0, dev_honest).neg_()
        byzantine = updates.index_select(0, dev_byz).neg_()
        poisoned = sim.attack.poison_gradients(honest, byzantine, ctx)
        if poisoned.shape != (len(byz_rows), sim.layout.d):
            raise RuntimeError(
                f"{type(sim.attack).__name__}.poison_gradients returned shape "
                f"{tuple(poisoned.shape)}, expected {(len(byz_rows), sim.layout.d)}."
            )
        updates[dev_byz] = poisoned.to(updates.dtype).neg()
    timers["attack_s"] += time.perf_counter() - tic

    tic = time.perf_counter()
    aggregate = sim.defense(updates)
    selected = sim.defense.last_selected
    byz_selected = None
    if selected is not None:
        byz_selected = int(torch.isin(selected.cpu(), byz_rows).sum())
    finite = bool(torch.isfinite(aggregate).all())
    sim.server.step(aggregate)
    timers["aggregate_s"] += time.perf_counter() - tic

    error = float(
        torch.linalg.vector_norm(aggregate - honest_mean) / torch.linalg.vector_norm(honest_mean)
    )
    return RoundResult(
        finite and bool(torch.isfinite(sim.global_params).all()), error, byz_selected, len(byz_rows)
    )


def evaluate_global(sim: Simulation) -> dict[str, float]:
    """Clean accuracy and loss of the global model, and ASR when the attack has a backdoor."""
    accuracy, loss = evaluate(
        sim.model, sim.layout, sim.global_params, sim.dataset.x_test, sim.dataset.y_test
    )
    metrics = {"accuracy": accuracy, "loss": loss}
    if sim.backdoor is not None:
        metrics["asr"], _ = evaluate(sim.model, sim.layout, sim.global_params, *sim.backdoor)
    return metrics


def _run_info(cfg: DictConfig) -> dict[str, Any]:
    return {
        "attack": option_label(cfg, "attack"),
        "defense": defense_label(cfg.defense),
        "dataset": option_label(cfg, "dataset"),
        "partition": option_label(cfg, "partition"),
        "model": option_label(cfg, "model"),
        "seed": int(cfg.seed),
        "num_clients": int(cfg.fl.num_clients),
        "num_byzantine": int(cfg.fl.num_byzantine),
    }


def failed_summary(cfg: DictConfig, reason: str, started: float) -> dict[str, Any]:
    """The summary of a run that could not complete."""
    return {
        **_run_info(cfg),
        "status": "failed",
        "reason": reason,
        "config_hash": config_hash(to_container(cfg)),
        "timings": {"total_s": time.perf_counter() - started},
    }


@dataclass
class RunState:
    """What a run accumulates over rounds besides the model (saved in the checkpoint)."""

    next_round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    timers: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    worst_error: float = 0.0
    byzantine_selected: int = 0
    byzantine_seen: int = 0
    status: str = "running"


def checkpoint_state(sim: Simulation, state: RunState, config_digest: str) -> dict[str, Any]:
    return {
        "config_hash": config_digest,
        "run": {**state.__dict__},
        "global_params": sim.global_params.cpu(),
        "client_momentum": None if sim.client_momentum is None else sim.client_momentum.cpu(),
        "server": sim.server.state_dict(),
        "generators": {name: g.get_state() for name, g in sim.generators.items()},
        "attack": sim.attack.state_dict(),
        "defense": sim.defense.state_dict(),
    }


def restore(sim: Simulation, saved: dict[str, Any]) -> RunState:
    """Put a checkpoint's state back into ``sim``; return the run's accumulated state."""
    sim.global_params.copy_(saved["global_params"])
    if sim.client_momentum is not None:
        sim.client_momentum.copy_(saved["client_momentum"])
    sim.server.load_state_dict(saved["server"])
    for name, value in saved["generators"].items():
        sim.generators[name].set_state(value)
    sim.attack.load_state_dict(saved["attack"])
    sim.defense.load_state_dict(_to_device(saved["defense"], sim.device))
    return RunState(**saved["run"])


def _to_device(state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()}


def run(cfg: DictConfig, run_dir: str | Path, tracker: Any = None) -> dict[str, Any]:
    """Run one experiment; write ``metrics.jsonl``, ``summary.json`` and ``checkpoint.pt``
    into ``run_dir``.

    Returns the summary. With ``resume=true`` a finished run (same config) is not run again,
    and an unfinished one continues from its checkpoint, ending with the metrics an
    uninterrupted run would have. A run whose model becomes non-finite stops with status
    ``"diverged"`` and keeps its metrics; user errors raise before any training.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fill_option_names(cfg)
    plain_config = to_container(cfg)
    digest = config_hash(plain_config)
    if cfg.resume:
        done = finished_summary(run_dir, digest)
        if done is not None:
            return done
    sim = setup(cfg)
    fl = cfg.fl
    state = RunState()
    if cfg.resume:
        saved = load_checkpoint(run_dir)
        if saved is not None and saved.get("config_hash") == digest and "server" in saved:
            state = restore(sim, saved)
            log.info("resuming %s at round %d", run_dir, state.next_round + 1)
    if tracker is not None:
        tracker.start(plain_config, run_dir)
    writer = MetricsWriter(run_dir)
    for record in state.history:  # a resumed run rewrites exactly the checkpointed rounds
        writer.write(record)
        if tracker is not None:
            tracker.log(record, step=record["round"])
    # total_s counts this process from its start (set-up included) plus earlier processes'.
    offset = started - state.timers.get("total_s", 0.0)
    progress = _progress(cfg, initial=state.next_round)
    every = cfg.get("checkpoint_every", 1)
    try:
        for r in range(state.next_round, fl.rounds):
            result = run_round(sim, r, state.timers)
            state.next_round = r + 1
            if math.isfinite(result.robustness_error):
                state.worst_error = max(state.worst_error, result.robustness_error)
            else:
                state.worst_error = math.inf
            if result.byzantine_selected is not None:
                state.byzantine_selected += result.byzantine_selected
                state.byzantine_seen += result.num_byzantine
            diverged = not result.aggregate_finite
            if diverged or (r + 1) % fl.eval_every == 0 or r + 1 == fl.rounds:
                tic = time.perf_counter()
                metrics = (
                    evaluate_global(sim)
                    if not diverged
                    else {"accuracy": math.nan, "loss": math.nan}
                )
                state.timers["eval_s"] += time.perf_counter() - tic
                diverged = diverged or not math.isfinite(metrics["loss"])
                record = {
                    "round": r + 1,
                    **metrics,
                    "robustness_error": result.robustness_error,
                    "byzantine_selected": result.byzantine_selected,
                    "num_byzantine": result.num_byzantine,
                    **{f"time_{k}": v for k, v in state.timers.items() if k != "total_s"},
                    "elapsed_s": time.perf_counter() - offset,
                }
                writer.write(record)
                state.history.append(record)
                if tracker is not None:
                    tracker.log(record, step=r + 1)
                if progress is not None:
                    progress.set_postfix(acc=f"{metrics['accuracy']:.3f}")
            if progress is not None:
                progress.update(1)
            if diverged:
                state.status = "diverged"
                log.warning("round %d: the global model became non-finite; stopping", r + 1)
                break
            if every and (r + 1) % every == 0 and r + 1 < fl.rounds:
                state.timers["total_s"] = time.perf_counter() - offset
                save_checkpoint(run_dir, checkpoint_state(sim, state, digest))
    finally:
        writer.close()
        if progress is not None:
            progress.close()

    if state.status == "running":
        state.status = "completed"
    state.timers["total_s"] = time.perf_counter() - offset
    if every:
        save_checkpoint(run_dir, checkpoint_state(sim, state, digest))
    summary = _summary(cfg, sim, digest, state)
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    if tracker is not None:
        tracker.finish(summary, state.history)
    log.debug("run took %.2f s", time.perf_counter() - started)
    return summary


def finished_summary(run_dir: Path, digest: str) -> dict[str, Any] | None:
    """The summary of a run that already ended (completed or diverged) with this config."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") in ("completed", "diverged") and summary.get("config_hash") == digest:
        summary["skipped"] = True
        return summary
    return None


def _summary(cfg: DictConfig, sim: Simulation, digest: str, state: RunState) -> dict[str, Any]:
    finite = [h for h in state.history if math.isfinite(h["accuracy"])]
    final = dict(finite[-1]) if finite else {}
    best = {"accuracy": max((h["accuracy"] for h in finite), default=math.nan)}
    if sim.backdoor is not None:
        best["asr"] = max((h["asr"] for h in finite), default=math.nan)
    return {
        **_run_info(cfg),
        "status": state.status,
        "rounds_completed": state.next_round,
        "final": {
            **{k: final[k] for k in ("round", "accuracy", "loss", "asr") if k in final},
            # The bucketing paper reports the mean of the last 5 evaluations.
            **(
                {"accuracy_last5_mean": sum(h["accuracy"] for h in finite[-5:]) / len(finite[-5:])}
                if finite
                else {}
            ),
        },
        "best": best,
        "worst_robustness_error": state.worst_error,
        "byzantine_selected_share": (
            state.byzantine_selected / state.byzantine_seen if state.byzantine_seen else None
        ),
        "byzantine_ids": sim.byzantine_ids.tolist(),
        "partition_hash": partition_hash(sim.parts),
        "config_hash": digest,
        "num_parameters": sim.layout.d,
        "device": str(sim.device),
        "data_notes": sim.dataset.notes,
        "timings": {k: round(v, 6) for k, v in state.timers.items()},
    }


def _progress(cfg: DictConfig, initial: int = 0):
    if not cfg.get("progress", True):
        return None
    from tqdm.auto import tqdm

    label = f"{option_label(cfg, 'attack')} vs {option_label(cfg, 'defense')}"
    return tqdm(
        total=cfg.fl.rounds, initial=initial, desc=label, unit="round", leave=False, disable=None
    )
