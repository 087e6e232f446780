"""Any robustfl defense as a Flower strategy (Flower's Message API, ``flwr.serverapp``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from omegaconf import DictConfig
from torch import Tensor

from robustfl.contracts import Defense, RoundContext
from robustfl.engine import check_aggregate, rule_name
from robustfl.flower.records import reply_metric, reply_rows, take_sent, unflatten_arrays
from robustfl.seeding import torch_generator
from robustfl.server import ServerOptimizer

#: The reply metric that names a client across rounds (robustfl's client apps send it).
CLIENT_KEY = "client-id"


@dataclass
class AggregateRecord:
    """One round's aggregation as the strategy saw it.

    Attributes:
        server_round: Flower's 1-based round.
        identities: the client identity of each row (``client-id`` or the node id), ascending.
        updates: ``(n, d)`` the rows the rule received (replies minus the weights sent).
        aggregate: ``(d,)`` the rule's output.
        kept: identities of the rows a selecting rule kept (Krum, Multi-Krum, ...), else None.
    """

    server_round: int
    identities: list[int]
    updates: Tensor
    aggregate: Tensor
    kept: list[int] | None


def dense_ids(table: dict[int, int], identities: list[int]) -> Tensor:
    """Small, stable ids ``(n,)`` for client identities (node ids can exceed int64): each
    identity gets the next free number on first sight, recorded in ``table``."""
    return torch.tensor([table.setdefault(i, len(table)) for i in identities])


class RobustStrategy(FedAvg):
    """FedAvg's sampling and messages, with robustfl's aggregation and server optimizer.

    Each round the replies' weights minus the weights sent out become the float32 update
    matrix ``U (n, d)``, rows ordered by client identity (the reply metric ``client_key`` when
    every reply has it, else the node id); the defense (with its pre-aggregators) maps ``U``
    to the aggregate ``a (d,)``; the server's SGD steps from the weights sent with ``-a`` as
    its gradient (``theta + server_lr * a`` without momentum or weight decay, so
    ``server_lr = 1`` with the mean is FedAvg with equal weights). Stateful rules (centered
    clipping, FoolsGold) keep their state in ``defense`` across rounds, per client identity.
    Selecting rules log the identities they kept, and return them as the train metric
    ``robustfl-kept`` (with node ids, which do not fit a metric: ``robustfl-kept-count``).

    Composes under Flower's wrappers, e.g. ``DifferentialPrivacyServerSideFixedClipping(
    RobustStrategy(...), noise_multiplier, clipping_norm, num_sampled_clients)``: the wrapper
    clips the replies before the rule sees them and adds noise to the weights it returns.

    Args:
        defense: a robustfl ``Defense`` (a rule or a ``Pipeline``); see :meth:`from_config`.
        server_lr, server_momentum, server_weight_decay: the server's SGD.
        seed: seeds the defense's random stream (bucketing's shuffles, ...) as robustfl does.
        client_key: the reply metric holding a client identity.
        server_update: for rules with a root set (FLTrust): the server's own update ``(d,)``
            from the weights sent out ``(d,)``.
        **fedavg: FedAvg's arguments (``fraction_train``, ``min_available_nodes``, ...).
    """

    def __init__(
        self,
        defense: Defense,
        *,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        server_weight_decay: float = 0.0,
        seed: int = 0,
        client_key: str = CLIENT_KEY,
        server_update: Callable[[Tensor], Tensor] | None = None,
        **fedavg,
    ) -> None:
        super().__init__(**fedavg)
        if not isinstance(defense, Defense):
            raise TypeError(
                f"RobustStrategy needs a robustfl Defense, got {type(defense).__name__}: build "
                "one with RobustStrategy.from_config(['defense=median', ...])."
            )
        self.defense = defense
        self.defense_generator = torch_generator(seed, "defense")
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.server_weight_decay = server_weight_decay
        self.client_key = client_key
        self.server_update = server_update
        self.last: AggregateRecord | None = None
        self._sent: dict[int, ArrayRecord] = {}
        self._dense: dict[int, int] = {}  # client identity -> small id for per-client state
        self._theta: Tensor | None = None
        self._server: ServerOptimizer | None = None

    @classmethod
    def from_config(cls, config: Sequence[str] | DictConfig = (), **kwargs) -> RobustStrategy:
        """The strategy of a robustfl config: ``defense``, ``pre``, the server's optimizer
        (``fl.server_lr``, ``fl.server_momentum``, ``fl.server_weight_decay``) and ``seed``,
        from a composed config or from overrides such as ``["defense=median",
        "pre=[bucketing]"]``. ``kwargs`` go to the constructor (FedAvg's arguments)."""
        from robustfl.api import compose_config
        from robustfl.build import build_defense

        cfg = config if isinstance(config, DictConfig) else compose_config(list(config))
        fl = cfg.fl
        options = {
            "server_lr": fl.server_lr,
            "server_momentum": fl.server_momentum,
            "server_weight_decay": fl.server_weight_decay,
            "seed": cfg.seed,
        }
        return cls(build_defense(cfg.defense, cfg.get("pre")), **{**options, **kwargs})

    def summary(self) -> None:
        log(INFO, "\t├──> robustfl rule: %s", rule_name(self.defense))
        log(
            INFO,
            "\t├──> server SGD: lr %s, momentum %s, weight decay %s",
            self.server_lr,
            self.server_momentum,
            self.server_weight_decay,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep the weights sent out (updates are computed against them), then
        :meth:`train_messages`."""
        self._sent[server_round] = arrays
        return self.train_messages(server_round, arrays, config, grid)

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's training messages: FedAvg's (a sample of nodes, one payload)."""
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies with the defense and step the server's optimizer."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        sent = take_sent(self._sent, server_round, "RobustStrategy")
        if not valid:
            return None, None
        rows = reply_rows(valid, sent, self.client_key)
        counts = torch.tensor(
            [float(reply_metric(reply, self.weighted_by_key) or 1.0) for reply in rows.replies]
        )
        aggregate = self.aggregate_updates(
            server_round, rows.updates, rows.identities, counts, rows.theta
        )
        new_theta = self.step(rows.theta, aggregate)
        metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        if metrics is not None and self.client_key in metrics:
            del metrics[self.client_key]  # an average of client ids means nothing
        kept = self.last.kept if self.last is not None else None
        if kept is not None:
            metrics = metrics if metrics is not None else MetricRecord()
            # node ids are unsigned 64-bit, beyond a metric's signed range: logged, counted
            metrics["robustfl-kept" if rows.named else "robustfl-kept-count"] = (
                kept if rows.named else len(kept)
            )
            log(INFO, "aggregate_train: %s kept clients %s", rule_name(self.defense), kept)
        return unflatten_arrays(new_theta, sent), metrics

    def aggregate_updates(
        self,
        server_round: int,
        updates: Tensor,
        identities: list[int],
        counts: Tensor,
        theta: Tensor,
    ) -> Tensor:
        """The defense's aggregate ``(d,)`` of ``updates (n, d)`` (rows of ``identities``,
        ``counts`` local samples each), sent weights ``theta (d,)``; records :attr:`last`."""
        ids = dense_ids(self._dense, identities)
        ctx = RoundContext(
            round=server_round - 1,
            defense=self.defense,
            global_params=theta,
            generator=torch.Generator(),  # no attack here (see AttackInjection)
            num_clients=len(updates),
            num_byzantine=0,
            byzantine_rows=torch.zeros(0, dtype=torch.long),
            sample_counts=counts,
            client_ids=ids,
            defense_generator=self.defense_generator,
            server_update=None
            if self.server_update is None
            else (lambda: self.server_update(theta)),
        )
        self.defense.check(len(updates))
        self.defense.prepare(ctx)
        aggregate = self.defense(updates)
        check_aggregate(self.defense, aggregate, updates, server_round - 1)
        selected = self.defense.last_selected
        kept = None if selected is None else [identities[int(i)] for i in selected.tolist()]
        self.last = AggregateRecord(server_round, identities, updates, aggregate, kept)
        return aggregate

    def step(self, theta: Tensor, aggregate: Tensor) -> Tensor:
        """The server's SGD from the sent weights ``theta (d,)`` with gradient ``-aggregate``;
        its momentum persists across rounds."""
        if self._theta is None:
            self._theta = theta.clone()
            self._server = ServerOptimizer(
                self._theta, self.server_lr, self.server_momentum, self.server_weight_decay
            )
        else:
            self._theta.copy_(theta)
        self._server.step(aggregate)
        return self._theta.clone()
