"""robustfl's attacks in a Flower federation: where each one runs, and the server-side wrapper
for those that need every honest update."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from robustfl.contracts import Attack, RoundContext, overrides
from robustfl.errors import ConfigError
from robustfl.flower.records import (
    ReplyRows,
    reply_arrays,
    reply_metric,
    reply_rows,
    take_sent,
    unflatten_arrays,
)
from robustfl.flower.strategy import CLIENT_KEY, RobustStrategy, dense_ids
from robustfl.seeding import torch_generator

Placement = Literal["none", "client", "server"]


def attack_placement(attack: Attack) -> Placement:
    """Where ``attack`` runs in a Flower federation.

    ``"client"``: inside the Byzantine nodes' client app, on their own data and update: data
    poisoning (label flipping, the backdoor's poisoned samples) and attacks whose every row
    depends only on its own client's row (:attr:`~robustfl.contracts.Attack.row_wise`: sign
    flipping, Gaussian noise, free riding, the backdoor's boost). ``"server"``: attacks that
    read other clients' updates (ALIE, IPM, min-max, min-sum, Fang, mimic, the adaptive attack,
    and local-knowledge attacks that pool the Byzantine clients' rows) run in
    :class:`AttackInjection`, a colluding adversary with the server's view. ``"none"``:
    ``attack=none``.
    """
    crafts_rows = overrides(attack, Attack, "poison_gradients")
    if not crafts_rows and not overrides(attack, Attack, "poison_data"):
        return "none"
    if not crafts_rows or attack.row_wise:
        return "client"
    return "server"


class AttackInjection(Strategy):
    """Wraps a strategy; before it aggregates, the Byzantine nodes' replies are replaced by the
    rows ``attack`` crafts from every reply of the round.

    Threat model: the Byzantine clients collude with an adversary who sees every honest
    update of the round (the server's view), as ALIE, IPM and min-max assume. The replies'
    weights minus the weights sent out are the updates; the attack works on pseudo-gradients
    (minus the updates, as in robustfl's engine) and its rows go back as weights. Rows are
    ordered by client identity (the reply metric ``client_key``, else the node id), as in
    :class:`RobustStrategy`.

    Put it outermost: ``AttackInjection(DifferentialPrivacyServerSideFixedClipping(
    RobustStrategy(...)))`` lets the server's clipping see the attackers' rows, as it would.

    Args:
        strategy: the strategy under attack (any Flower strategy; an attack that simulates
            the rule, the adaptive attack, needs a :class:`RobustStrategy`).
        attack: a robustfl attack that crafts rows (``poison_gradients``).
        byzantine: the identities of the Byzantine clients.
        seed: seeds the attack's random stream as robustfl's engine does.

    Raises:
        ConfigError: at construction, for an attack that only poisons data (it runs in the
            clients) or one that simulates a rule the wrapped strategy does not expose; in a
            round, when an omniscient attack would see no honest reply.
    """

    def __init__(
        self,
        strategy: Strategy,
        attack: Attack,
        byzantine: Collection[int],
        *,
        seed: int = 0,
        client_key: str = CLIENT_KEY,
    ) -> None:
        name = type(attack).__name__
        if not overrides(attack, Attack, "poison_gradients"):
            raise ConfigError(
                f"{name} only poisons the Byzantine clients' data: it runs inside their client "
                "app (robustfl.flower.app), not in AttackInjection."
            )
        self.rule = strategy if isinstance(strategy, RobustStrategy) else None
        if attack.simulates_defense and self.rule is None:
            raise ConfigError(
                f"{name} simulates the server's rule to choose its rows, but the wrapped "
                f"{type(strategy).__name__} exposes no robustfl rule: wrap a RobustStrategy."
            )
        self.strategy, self.attack = strategy, attack
        self.byzantine = frozenset(int(i) for i in byzantine)
        self.generator = torch_generator(seed, "attack")
        self.client_key = client_key
        self._sent: dict[int, ArrayRecord] = {}
        self._dense: dict[int, int] = {}  # client identity -> small id (mimic's victim)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent[server_round] = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        sent = take_sent(self._sent, server_round, "AttackInjection")
        rows = reply_rows(replies, sent, self.client_key)
        byz = [row for row, ident in enumerate(rows.identities) if ident in self.byzantine]
        if byz:
            self.inject(server_round, rows, byz)
        return self.strategy.aggregate_train(server_round, replies)

    def inject(self, server_round: int, rows: ReplyRows, byz: list[int]) -> None:
        """Replace the replies at rows ``byz`` (in place) by the crafted rows."""
        honest = [row for row in range(len(rows.replies)) if row not in set(byz)]
        if not honest and self.attack.knowledge == "omniscient":
            raise ConfigError(
                f"{type(self.attack).__name__} needs the honest updates of round "
                f"{server_round}, but every reply came from a Byzantine client."
            )
        ctx = RoundContext(
            round=server_round - 1,
            defense=None if self.rule is None else self.rule.defense,
            global_params=rows.theta,
            generator=self.generator,
            num_clients=len(rows.replies),
            num_byzantine=len(byz),
            byzantine_rows=torch.tensor(byz),
            sample_counts=torch.tensor(
                [float(reply_metric(r, "num-examples") or 1.0) for r in rows.replies]
            ),
            client_ids=dense_ids(self._dense, rows.identities),
            defense_generator=None if self.rule is None else self.rule.defense_generator,
        )
        pseudo = rows.updates.neg()
        crafted = self.attack.poison_gradients(pseudo[honest], pseudo[byz], ctx)
        if crafted.shape != (len(byz), rows.updates.shape[1]):
            raise RuntimeError(
                f"{type(self.attack).__name__}.poison_gradients returned shape "
                f"{tuple(crafted.shape)}, expected {(len(byz), rows.updates.shape[1])}."
            )
        for row, pseudo_gradient in zip(byz, crafted, strict=True):
            key, record = reply_arrays(rows.replies[row])
            rows.replies[row].content[key] = unflatten_arrays(rows.theta - pseudo_gradient, record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
