"""Mimic (Karimireddy, He and Jaggi 2022, ICLR: "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.common import repeat_row
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


def honest_client_ids(ctx: RoundContext) -> Tensor:
    """Client ids of the honest rows, in the order of the ``honest`` matrix."""
    is_byz = torch.zeros(ctx.num_clients, dtype=torch.bool)
    is_byz[ctx.byzantine_rows.cpu()] = True
    ids = ctx.client_ids if ctx.client_ids is not None else torch.arange(ctx.num_clients)
    return ids.cpu()[~is_byz]


def power_step(honest: Tensor, mu: Tensor, z: Tensor) -> Tensor:
    """``sum_i <h_i - mu, z> (h_i - mu)``, normalized: one power-iteration step towards the
    top principal direction of ``honest (h, d)`` around ``mu (d,)``, from ``z (d,)``."""
    centered = honest - mu
    step = centered.T @ (centered @ z)
    return step / torch.linalg.vector_norm(step).clamp(min=torch.finfo(step.dtype).tiny)


class Mimic(Attack):
    """Every Byzantine client copies one honest client's pseudo-gradient, over-representing it
    (harmful on heterogeneous data, invisible to any outlier test).

    The victim is chosen as in the authors' code (``MimicVariantAttacker``): in round 0,
    ``mu`` is the honest mean and ``z`` one power-iteration step (:func:`power_step`) from a
    random vector; in each warm-up round ``t = 1 .. warmup - 1`` both become running averages,
    ``mu <- (t mu + mean_t) / (t + 1)`` and ``z <- normalize((t z + power_step(mu, z)) / (t + 1))``.
    Every warm-up round copies the honest row with the largest ``<h_i, z>``; after the warm-up
    that client stays the victim (while it does not participate, the current best stands in).

    Args:
        victim: a fixed honest client id instead of the heuristic.
        warmup: rounds of direction estimation (``args.mimic_warmup`` in the authors' code).
        start_seed: the seed of the random start of the direction, drawn on the updates'
            device; ``None`` draws it from the run's attack stream. The authors' code starts
            from seed 0 in every run (``g.manual_seed(0)``), so their victim depends on the
            run's seed only through the gradients.
    """

    def __init__(
        self,
        victim: int | None = None,
        warmup: int = 1,
        knowledge: str = "omniscient",
        start_seed: int | None = None,
    ) -> None:
        super().__init__(knowledge)
        if knowledge != "omniscient":
            raise ConfigError(
                "attack=mimic copies an honest update: it needs attack.knowledge=omniscient."
            )
        if warmup < 1:
            raise ConfigError(f"attack.warmup={warmup} is invalid: it must be >= 1.")
        self.victim, self.warmup, self.start_seed = victim, warmup, start_seed
        self.mu: Tensor | None = None
        self.direction: Tensor | None = None
        self.chosen: int | None = None
        self.rounds_seen = 0

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        ids = honest_client_ids(ctx).tolist()
        if self.victim is not None:
            if self.victim not in ids:
                raise ConfigError(
                    f"attack.victim={self.victim} is not an honest participating "
                    f"client this round (honest ids: {ids})."
                )
            return repeat_row(honest[ids.index(self.victim)], len(byzantine))
        t = self.rounds_seen
        if t < self.warmup:
            self._estimate(honest, ctx.generator)
        if t < self.warmup or self.chosen not in ids:
            self.chosen = ids[int(torch.argmax(honest @ self.direction))]
        self.rounds_seen += 1
        return repeat_row(honest[ids.index(self.chosen)], len(byzantine))

    def _estimate(self, honest: Tensor, generator: torch.Generator) -> None:
        """Round ``t`` of the warm-up: update the running ``mu`` and ``direction``."""
        t = self.rounds_seen
        mean = honest.mean(dim=0)
        if t == 0:
            self.mu = mean
            if self.start_seed is not None:
                generator = torch.Generator(device=honest.device).manual_seed(self.start_seed)
            start = torch.randn(honest.shape[1], generator=generator, device=generator.device)
            start = start.to(honest)
            self.direction = power_step(honest, self.mu, start)
            return
        self.mu = (t * self.mu + mean) / (t + 1)
        z = (t * self.direction + power_step(honest, self.mu, self.direction)) / (t + 1)
        self.direction = z / torch.linalg.vector_norm(z).clamp(min=torch.finfo(z.dtype).tiny)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "direction": self.direction,
            "chosen": self.chosen,
            "rounds": self.rounds_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu, self.direction = state.get("mu"), state.get("direction")
        self.chosen = state.get("chosen")
        self.rounds_seen = int(state.get("rounds", 0))
