"""The federated simulation: the objects of a run and its rounds.

A round: sample the participating clients; every one trains locally from the global model
(Byzantine clients on their possibly poisoned data), all at once; the attack replaces the
Byzantine rows (on pseudo-gradients, minus the updates); the defense aggregates; the server
steps. :func:`robustfl.build.build` makes a :class:`Simulation` from a config;
:func:`robustfl.run.run` runs one to the end with evaluation, results on disk and tracking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from robustfl.compression import Compression
from robustfl.contracts import Attack, Defense, RoundContext, overrides
from robustfl.errors import ConfigError
from robustfl.privacy import Privacy
from robustfl.seeding import torch_generator
from robustfl.server import ServerOptimizer
from robustfl.training import (
    ClientData,
    DropoutMasks,
    LocalTrainer,
    ParamLayout,
    evaluate,
    sample_batch_indices,
)


@dataclass
class Federation:
    """Who takes part: ``num_clients`` clients, the Byzantine ones fixed for the run."""

    num_clients: int
    clients_per_round: int
    byzantine_ids: Tensor  # (f,) sorted client ids
    sampling: str = "fixed"  # or "poisson": each client with probability per_round / num_clients

    @property
    def is_byzantine(self) -> Tensor:
        """``(num_clients,)`` bool."""
        mask = torch.zeros(self.num_clients, dtype=torch.bool)
        mask[self.byzantine_ids] = True
        return mask

    def participants(self, generator: torch.Generator) -> Tensor:
        """Sorted ids of this round's clients: all of them when every client takes part;
        else exactly ``clients_per_round`` drawn without replacement (``fixed``), or each
        client independently with probability ``clients_per_round / num_clients``
        (``poisson``: the round's size varies and can be 0)."""
        if self.clients_per_round == self.num_clients:
            return torch.arange(self.num_clients)
        if self.sampling == "poisson":
            rate = self.clients_per_round / self.num_clients
            return torch.nonzero(torch.rand(self.num_clients, generator=generator) < rate)[:, 0]
        chosen = torch.randperm(self.num_clients, generator=generator)
        return chosen[: self.clients_per_round].sort().values


@dataclass
class Evaluation:
    """The clean test set, and the triggered one of a backdoor attack, evaluated with
    ``model`` in batches of ``batch_size`` (:func:`robustfl.kernels.evaluation_plan`)."""

    model: nn.Module
    layout: ParamLayout
    x: Tensor
    y: Tensor
    backdoor: tuple[Tensor, Tensor] | None
    batch_size: int = 4096
    backdoor_metric: str = "asr"  # or "trigger_rate", for a clean model (Attack.targeted)

    def __call__(self, params: Tensor) -> dict[str, float]:
        """Accuracy and loss of the model with flat ``params (d,)``, and the share of the
        triggered inputs it assigns to the target when there are any (``backdoor_metric``)."""
        accuracy, loss = evaluate(self.model, self.layout, params, self.x, self.y, self.batch_size)
        metrics = {"accuracy": accuracy, "loss": loss}
        if self.backdoor is not None:
            metrics[self.backdoor_metric], _ = evaluate(
                self.model, self.layout, params, *self.backdoor, self.batch_size
            )
        return metrics


@dataclass(frozen=True)
class DropoutSeeds:
    """How the clients' dropout seeds (:class:`~robustfl.training.DropoutMasks`) are drawn.

    The default, ``shared=False, period=1``, gives every client its own seed every round from
    the run's ``"dropout"`` stream. ``shared`` gives every client the same seed (the same masks,
    step by step); ``period = k`` keeps one draw for ``k`` rounds. Karimireddy et al.'s code
    (``codes/simulator.py``: every worker computes its gradient from the same restored global
    RNG state, which only the evaluation, once per 30-iteration epoch, advances) amounts to
    ``shared=True, period=30``. With ``period > 1`` the draw of round ``r`` depends only on the
    run's seed and ``r // period``, so a resumed run continues it.
    """

    shared: bool = False
    period: int = 1
    seed: int = 0

    @property
    def per_round(self) -> bool:
        """Whether the seeds are drawn every round from the run's stream (the default)."""
        return not self.shared and self.period == 1

    def draw(
        self,
        masks: DropoutMasks,
        clients: Tensor,
        num_clients: int,
        round_index: int,
        stream: torch.Generator,
    ) -> Tensor | None:
        """The seeds ``(len(clients),)`` of ``clients`` in round ``round_index``, or ``None`` for
        a model without dropout."""
        if not masks or self.per_round:
            return masks.seeds(len(clients), stream)
        generator = torch_generator(self.seed, f"dropout/{round_index // self.period}")
        if self.shared:
            return masks.seeds(1, generator).expand(len(clients))
        return masks.seeds(num_clients, generator)[clients.cpu()]


@dataclass
class Simulation:
    """A run's objects (:func:`robustfl.build.build`) and its state between rounds."""

    federation: Federation
    data: ClientData
    root: ClientData | None  # the server's clean root set (FLTrust)
    local_steps: int
    batch_size: int
    trainer: LocalTrainer
    attack: Attack
    defense: Defense
    server: ServerOptimizer
    evaluation: Evaluation
    # State that evolves over rounds (what a checkpoint holds, with the objects' own state).
    global_params: Tensor
    client_momentum: Tensor | None
    streams: dict[str, torch.Generator]  # robustfl.seeding.STREAMS
    parts: list[np.ndarray] = field(default_factory=list)
    data_notes: list[str] = field(default_factory=list)
    updates: Tensor | None = None  # the (n, d) update matrix, reused every round
    byzantine_momentum: bool = True  # False: Byzantine clients' buffers restart every round
    dropout_seeds: DropoutSeeds = field(default_factory=DropoutSeeds)
    privacy: Privacy = field(default_factory=Privacy)
    compression: Compression = field(default_factory=Compression)

    @property
    def device(self) -> torch.device:
        return self.global_params.device


class Stopwatch:
    """Seconds spent per phase, summed over rounds: ``with watch("train_s"): ...``."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - tic


@dataclass
class RoundResult:
    finite: bool  # the aggregate and the new global model are finite
    aggregate_finite: bool  # the rule's output was finite
    updates_finite: bool  # every row the rule received was finite
    robustness_error: float  # ||aggregate - mean(honest)|| / ||mean(honest)||, on the messages
    byzantine_selected: int | None  # Byzantine rows a selecting rule kept
    num_byzantine: int  # Byzantine rows this round
    participants: int = 0  # clients of the round
    skipped: str | None = None  # why the round made no update (Poisson sampling), if it did not


def server_update(sim: Simulation) -> Tensor:
    """The server's own ``(d,)`` update: local training on its root set from the global model,
    with the clients' settings (no momentum), for defenses such as FLTrust."""
    if sim.root is None:
        raise RuntimeError(
            f"{type(sim.defense).__name__} called ctx.server_update() but declares no root_size: "
            "set its root_size (the server's clean root set, in samples)."
        )
    clients = torch.zeros(1, dtype=torch.long)
    batches = sample_batch_indices(
        sim.root, clients, sim.local_steps, sim.batch_size, sim.streams["server"]
    )
    seeds = sim.trainer.dropout.seeds(1, sim.streams["server"])
    return sim.trainer.train(
        sim.global_params, sim.root.x, sim.root.y, batches, dropout_seeds=seeds
    )[0]


def training_plan(
    sim: Simulation, clients: Tensor, round_index: int
) -> tuple[Tensor, Tensor | None]:
    """The random draws of round ``round_index``'s local training: the minibatch indices
    ``(n, steps, B)`` of ``clients (n,)`` into ``sim.data`` and their dropout seeds ``(n,)``
    (``None`` for a model without dropout). Drawn for all participants at once, from the
    run's ``"batches"`` and ``"dropout"`` streams."""
    batches = sample_batch_indices(
        sim.data, clients, sim.local_steps, sim.batch_size, sim.streams["batches"]
    )
    seeds = sim.dropout_seeds.draw(
        sim.trainer.dropout,
        clients,
        sim.federation.num_clients,
        round_index,
        sim.streams["dropout"],
    )
    return batches, seeds


def train_clients(sim: Simulation, clients: Tensor, round_index: int) -> Tensor:
    """The ``(n, d)`` updates of ``clients`` in round ``round_index``, with their momentum
    carried across rounds."""
    batches, seeds = training_plan(sim, clients, round_index)
    rows = clients.to(sim.device)
    everyone = len(clients) == sim.federation.num_clients
    momentum = sim.client_momentum
    if momentum is not None and not sim.byzantine_momentum:
        momentum[sim.federation.byzantine_ids.to(sim.device)] = 0.0
    if momentum is not None and not everyone:
        momentum = momentum.index_select(0, rows)  # gathered, scattered back below
    if sim.updates is None or len(sim.updates) != len(clients):
        sim.updates = torch.empty(len(clients), sim.trainer.layout.d, device=sim.device)
    updates = sim.trainer.train(
        sim.global_params, sim.data.x, sim.data.y, batches, momentum, sim.updates, seeds
    )
    if momentum is not None and not everyone:
        sim.client_momentum[rows] = momentum
    return updates


def transmit(sim: Simulation, updates: Tensor, clients: Tensor, honest: Tensor) -> None:
    """Turn the rows of ``updates (n, d)`` into the messages ``clients`` send, in place: local
    differential privacy first (the honest rows, ``honest (n,)``, clip and add noise), then
    compression (with error feedback). Without either, the updates are the messages."""
    if not (sim.privacy.active or sim.compression.active):
        return
    sim.privacy.privatize_messages(updates, clients, honest, sim.streams["privacy"])
    sim.compression.encode(updates, clients, sim.streams["compression"])


def poison(sim: Simulation, updates: Tensor, byz_rows: Tensor, ctx: RoundContext) -> None:
    """Replace the Byzantine rows of ``updates`` in place by the attack's crafted rows. The
    attack works on pseudo-gradients, minus the updates (``robustfl.contracts``)."""
    honest_rows = torch.ones(len(updates), dtype=torch.bool)
    honest_rows[byz_rows] = False
    honest_rows = torch.nonzero(honest_rows).flatten().to(sim.device)
    byz_rows = byz_rows.to(sim.device)
    honest = updates.index_select(0, honest_rows).neg_()  # index_select copies the rows
    byzantine = updates.index_select(0, byz_rows).neg_()
    crafted = sim.attack.poison_gradients(honest, byzantine, ctx)
    if crafted.shape != byzantine.shape:
        raise RuntimeError(
            f"{type(sim.attack).__name__}.poison_gradients returned shape "
            f"{tuple(crafted.shape)}, expected {tuple(byzantine.shape)}."
        )
    # Byzantine clients send messages valid for the protocol (robustfl.compression)
    updates[byz_rows] = sim.compression.valid(crafted.to(updates.dtype).neg())


def rule_name(defense: Defense) -> str:
    """A defense's class name, behind its pre-aggregators' (``NearestNeighborMixing+Median``)."""
    stages = [type(stage).__name__ for stage in getattr(defense, "pre", [])]
    return "+".join([*stages, type(getattr(defense, "rule", defense)).__name__])


def check_aggregate(defense: Defense, aggregate: Tensor, updates: Tensor, round_index: int) -> None:
    """Raise a ``TypeError`` naming the rule and the round unless ``aggregate`` is a ``(d,)``
    tensor of the updates' dtype and device for ``updates (n, d)``."""
    d = updates.shape[1]
    wrong = None
    if not isinstance(aggregate, Tensor):
        wrong = f"a {type(aggregate).__name__}"
    elif aggregate.shape != (d,):
        wrong = f"shape {tuple(aggregate.shape)}"
    elif aggregate.dtype != updates.dtype or aggregate.device != updates.device:
        wrong = f"a {aggregate.dtype} tensor on {aggregate.device}"
    if wrong is not None:
        raise TypeError(
            f"defense {rule_name(defense)} returned {wrong} in round {round_index + 1}: a rule "
            f"maps the (n, d) = {tuple(updates.shape)} update matrix to one ({d},) aggregate "
            f"of dtype {updates.dtype} on {updates.device}."
        )


def skip_reason(sim: Simulation, clients: Tensor, byzantine: int) -> str | None:
    """Why a round of ``clients`` (``byzantine`` of them Byzantine) cannot run, or None: no
    client drawn, or fewer rows than the rule (or the attack) needs. Only Poisson sampling
    draws such rounds; the others were checked before training."""
    if len(clients) == 0:
        return "no client drawn"
    try:
        sim.defense.check(len(clients))
        sim.attack.check(len(clients), byzantine)
    except ConfigError as error:
        return str(error)
    return None


def skipped_round(clients: Tensor, reason: str) -> RoundResult:
    return RoundResult(True, True, True, math.nan, None, 0, len(clients), reason)


def run_round(sim: Simulation, round_index: int, watch: Stopwatch) -> RoundResult:
    """One round; updates ``sim``'s global model and state in place. A Poisson-sampled round
    that the rule cannot aggregate (:func:`skip_reason`) makes no update and says why; under
    central privacy an empty round still releases its noise (the account counts it)."""
    clients = sim.federation.participants(sim.streams["sampling"])
    is_byzantine = sim.federation.is_byzantine[clients]
    byz_rows = torch.nonzero(is_byzantine).flatten()
    if sim.federation.sampling == "poisson":
        reason = skip_reason(sim, clients, len(byz_rows))
        if reason is not None:
            if not len(clients) and sim.privacy.placement == "central":
                # DP-FedAvg releases the noise of an empty sum all the same
                zero = torch.zeros_like(sim.global_params)
                sim.server.step(sim.privacy.noise_aggregate(zero, 0, sim.streams["privacy"]))
            return skipped_round(clients, reason)

    with watch("train_s"):
        updates = train_clients(sim, clients, round_index)
    # Byzantine clients that attack apply no mechanism that limits them; under attack=none
    # they behave honestly, privacy included
    attacking = overrides(sim.attack, Attack, "poison_data") or overrides(
        sim.attack, Attack, "poison_gradients"
    )
    honest = ~is_byzantine if attacking else torch.ones_like(is_byzantine)
    with watch("transmit_s"):
        transmit(sim, updates, clients, honest)
    ctx = RoundContext(
        round=round_index,
        defense=sim.defense,
        global_params=sim.global_params,
        generator=sim.streams["attack"],
        num_clients=len(clients),
        num_byzantine=len(byz_rows),
        byzantine_rows=byz_rows,
        sample_counts=sim.data.sizes[clients.to(sim.device)].to(updates.dtype),
        client_ids=clients,
        defense_generator=sim.streams["defense"],
        server_update=lambda: server_update(sim),
    )
    with watch("aggregate_s"):
        sim.defense.prepare(ctx)  # first, so that an attack simulates the rule as it will run
    with watch("attack_s"):
        if len(byz_rows) and overrides(sim.attack, Attack, "poison_gradients"):
            poison(sim, updates, byz_rows, ctx)
        sim.privacy.enforce(updates, is_byzantine)  # a protocol-enforced norm bound, if any
    with watch("aggregate_s"):
        received = sim.privacy.clip_received(updates)
        aggregate = sim.defense(received)
        check_aggregate(sim.defense, aggregate, updates, round_index)
        sim.server.step(
            sim.privacy.noise_aggregate(aggregate, len(clients), sim.streams["privacy"])
        )

    selected = sim.defense.last_selected
    return round_result(
        aggregate,
        received,
        is_byzantine,
        None if selected is None else int(torch.isin(selected.cpu(), byz_rows).sum()),
        sim.global_params,
    )


def round_result(
    aggregate: Tensor,
    received: Tensor,
    is_byzantine: Tensor,
    byzantine_selected: int | None,
    global_params: Tensor,
) -> RoundResult:
    """A round's :class:`RoundResult` from the rule's ``aggregate (d,)``, the rows it received
    ``received (n, d)`` (the honest ones as sent, clipped under central DP), which rows are
    Byzantine ``(n,)``, how many Byzantine rows a selecting rule kept, and the model after the
    step. The robustness error is ``||aggregate - h|| / ||h||``, ``h`` the mean of the honest
    rows received."""
    honest = ~is_byzantine.to(received.device)
    weights = honest.to(received.dtype) / max(int(honest.sum()), 1)
    honest_mean = weights @ received
    error = torch.linalg.vector_norm(aggregate - honest_mean) / torch.linalg.vector_norm(
        honest_mean
    )
    finite = bool(torch.isfinite(aggregate).all())
    return RoundResult(
        finite=finite and bool(torch.isfinite(global_params).all()),
        aggregate_finite=finite,
        updates_finite=finite or bool(torch.isfinite(received).all()),
        robustness_error=float(error),
        byzantine_selected=byzantine_selected,
        num_byzantine=int(is_byzantine.sum()),
        participants=len(received),
    )
