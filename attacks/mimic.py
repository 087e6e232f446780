"""Mimic (Karimireddy, He and Jaggi 2022, ICLR: "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Attack, repeat_row
from robustfl.context import RoundContext
from robustfl.errors import ConfigError


def honest_client_ids(ctx: RoundContext) -> Tensor:
    """Client ids of the honest rows, in the order of the ``honest`` matrix."""
    is_byz = torch.zeros(ctx.num_clients, dtype=torch.bool)
    is_byz[ctx.byzantine_rows.cpu()] = True
    ids = ctx.client_ids if ctx.client_ids is not None else torch.arange(ctx.num_clients)
    return ids.cpu()[~is_byz]


class Mimic(Attack):
    """Every Byzantine client copies one honest client's update, over-representing it (harmful
    on heterogeneous data, invisible to any outlier test).

    The victim is the honest client with the largest projection on the direction of largest
    variance of the honest updates, as in the paper: during the first ``warmup`` rounds that
    direction ``z`` is refined by one power-iteration step per round
    (``z <- sum_i <h_i - mu, z> (h_i - mu)``, normalized) and the victim re-chosen; afterwards
    the victim is fixed (falling back to the current best while it does not participate).

    Args:
        victim: a fixed honest client id instead of the heuristic.
        warmup: rounds of direction estimation (the paper's code uses 1).
    """

    poisons_updates = True

    def __init__(
        self, victim: int | None = None, warmup: int = 1, knowledge: str = "omniscient"
    ) -> None:
        super().__init__(knowledge)
        if knowledge != "omniscient":
            raise ConfigError(
                "attack=mimic copies an honest update: it needs attack.knowledge=omniscient."
            )
        if warmup < 1:
            raise ConfigError(f"attack.warmup={warmup} is invalid: it must be >= 1.")
        self.victim, self.warmup = victim, warmup
        self.direction: Tensor | None = None
        self.chosen: int | None = None
        self._rounds_seen = 0

    def poison_updates(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        ids = honest_client_ids(ctx)
        if self.victim is not None:
            if self.victim not in ids.tolist():
                raise ConfigError(
                    f"attack.victim={self.victim} is not an honest participating "
                    f"client this round (honest ids: {ids.tolist()})."
                )
            return repeat_row(honest[ids.tolist().index(self.victim)], len(byzantine))
        centered = honest - honest.mean(dim=0)
        warming_up = self._rounds_seen < self.warmup
        if warming_up or self.direction is None:
            z = self.direction
            if z is None:
                z = torch.randn(honest.shape[1], generator=ctx.generator).to(honest)
            z = centered.T @ (centered @ z)
            self.direction = z / torch.linalg.vector_norm(z).clamp(min=1e-30)
        if warming_up or self.chosen not in ids.tolist():
            self.chosen = int(ids[int(torch.argmax(centered @ self.direction))])
        self._rounds_seen += 1
        return repeat_row(honest[ids.tolist().index(self.chosen)], len(byzantine))

    def state_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "chosen": self.chosen, "rounds": self._rounds_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.direction, self.chosen = state.get("direction"), state.get("chosen")
        self._rounds_seen = int(state.get("rounds", 0))
