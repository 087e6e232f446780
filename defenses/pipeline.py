"""Pre-aggregators in front of a rule: ``rule(pre_k(...pre_1(updates)))``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustfl.contracts import Defense, PreAggregator, RoundContext
from robustfl.errors import ConfigError, TooFewRows


class Pipeline(Defense):
    """Pre-aggregators applied in order, then the rule; itself a :class:`Defense`."""

    def __init__(self, pre: list[PreAggregator], rule: Defense) -> None:
        super().__init__()
        self.pre = list(pre)
        self.rule = rule
        self.root_size = rule.root_size
        self.uses_client_identity = rule.uses_client_identity
        self.plain_mean = rule.plain_mean and not self.pre
        self.rotation_equivariant = rule.rotation_equivariant and all(
            stage.rotation_equivariant for stage in self.pre
        )

    def __call__(self, updates: Tensor) -> Tensor:
        for stage in self.pre:
            updates = stage(updates)
        out = self.rule(updates)
        # Row identities are lost once rows are mixed; report selections only without mixing.
        self.last_selected = self.rule.last_selected if not self.pre else None
        return out

    def check(self, n: int) -> None:
        clients = n
        for stage in self.pre:
            stage.check(n)
            if self.rule.uses_client_identity and stage.output_rows(n) != n:
                raise ConfigError(
                    f"defense={type(self.rule).__name__} uses per-client facts of its rows "
                    f"(sample counts or client ids), but {type(stage).__name__} merges rows "
                    "before it: drop that pre-aggregator or use the rule without weighting."
                )
            n = stage.output_rows(n)
        try:
            self.rule.check(n)
        except TooFewRows as error:
            needed = clients
            while self.rows_after(needed) < error.minimum:
                needed += 1
            names = ",".join(type(stage).__name__ for stage in self.pre)
            received = f"{error.received} (pre=[{names}] turns {clients} clients into {n} rows)"
            raise TooFewRows(
                error.requirement, received, error.minimum, error.lower, needed
            ) from None

    def rows_after(self, clients: int) -> int:
        """The rows the rule receives from ``clients`` rows per round."""
        for stage in self.pre:
            clients = stage.output_rows(clients)
        return clients

    def split_equivariant(self) -> tuple[list[PreAggregator], Defense]:
        """``(head, tail)`` with ``self(U) = tail(head_k(...head_1(U)))``: the leading
        rotation-equivariant pre-aggregators and the rest as one defense. Adaptive attacks run
        the head in the span of the rows and only the tail on all ``d`` coordinates."""
        count = 0
        while count < len(self.pre) and self.pre[count].rotation_equivariant:
            count += 1
        rest = self.pre[count:]
        return self.pre[:count], (Pipeline(rest, self.rule) if rest else self.rule)

    def prepare(self, ctx: RoundContext) -> None:
        for stage in self.pre:
            stage.prepare(ctx)
        self.rule.prepare(ctx)

    def set_generator(self, generator: torch.Generator | None) -> None:
        for stage in self.pre:
            stage.set_generator(generator)
        self.rule.set_generator(generator)

    def reset(self) -> None:
        super().reset()
        self.rule.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)
