"""Client-level differential privacy with the Gaussian mechanism, in its two placements.

- **local**: every client clips its update to norm ``clip`` and adds ``N(0, (sigma clip)^2 I)``
  itself, before anything leaves it; the server and the other clients are not trusted.
- **central** (DP-FedAvg, McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially
  Private Recurrent Language Models"): the clients send their updates to a trusted server,
  which clips every row to ``clip``, aggregates, and adds ``N(0, (sigma clip / m)^2 I)`` to
  the aggregate of the ``m`` rows of the round (the noise of the clipped sum, over the fixed
  denominator ``m``); only the noised models are released.

Privacy is **client-level**: neighbouring federations differ in one client's entire data
(added or removed; its clipped update changes the released sum by at most ``clip``). The
privacy spent is computed by Google's ``dp_accounting`` (Renyi DP accountant), never by hand:
see :class:`PrivacyAccountant` for what it assumes in each placement. ``docs/privacy.md``
states the threat model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from robustfl.errors import ConfigError
from robustfl.linalg import clip_rows, clip_scales, row_norms

PLACEMENTS = ("none", "local", "central")
GUARANTEES = {
    "local": "each honest client's data, against everyone else (server and Byzantine clients "
    "included), over its own messages; Byzantine clients' messages are not private",
    "central": "every client's data, against whoever sees the models, when the released "
    "aggregate is the mean of the clipped rows (sensitivity clip / m, DP-FedAvg); a robust "
    "rule's sensitivity to one client can be larger, and the epsilon does not cover it",
}


def gaussian_mechanism_(
    updates: Tensor, clip: float, noise_multiplier: float, generator: torch.Generator
) -> Tensor:
    """Local placement, in place: each row of ``updates (n, d)`` clipped to norm ``clip``
    (non-finite rows become zero) plus independent ``N(0, (noise_multiplier clip)^2)`` per
    coordinate."""
    norms = row_norms(updates)
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        updates[~finite] = 0.0
    updates.mul_(clip_scales(norms, clip).to(updates.dtype)[:, None])
    if noise_multiplier:
        noise = torch.randn(
            updates.shape, generator=generator, device=updates.device, dtype=updates.dtype
        )
        updates.add_(noise, alpha=noise_multiplier * clip)
    return updates


def noised_aggregate(
    aggregate: Tensor, rows: int, clip: float, noise_multiplier: float, generator: torch.Generator
) -> Tensor:
    """Central placement: ``aggregate (d,)`` of ``rows`` clipped rows plus
    ``N(0, (noise_multiplier clip / rows)^2)`` per coordinate (DP-FedAvg's noise on the
    sum of the clipped updates, divided by the fixed denominator ``rows``)."""
    if noise_multiplier == 0:
        return aggregate
    noise = torch.randn(
        aggregate.shape, generator=generator, device=aggregate.device, dtype=aggregate.dtype
    )
    return aggregate + noise * (noise_multiplier * clip / rows)


class PrivacyAccountant:
    """Epsilon at ``delta`` after some rounds, from ``dp_accounting``'s Renyi DP accountant
    (add-or-remove-one-client adjacency).

    - **local**: the server sees who sends what, so client sampling does not amplify privacy.
      A client that took part in ``k`` rounds released ``k`` Gaussian mechanisms of noise
      multiplier ``sigma``: epsilon is that composition, for the client that took part most.
    - **central**: each round samples ``q = clients_per_round / num_clients`` of the clients,
      which the released model does not reveal: ``rounds`` Poisson-subsampled Gaussian
      mechanisms at rate ``q`` (the engine samples exactly ``clients_per_round`` clients; the
      Poisson account is the usual stand-in, as in McMahan et al. 2018; exact when ``q = 1``).
    """

    def __init__(self, placement: str, noise_multiplier: float, delta: float, rate: float) -> None:
        self.placement = placement
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.rate = rate

    def epsilon(self, releases: int) -> float:
        """Epsilon after ``releases`` Gaussian releases: for ``local``, the most rounds any one
        client took part in; for ``central``, the rounds run. ``inf`` without noise."""
        if releases == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        event: Any = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.placement == "central" and self.rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(self.rate, event)
        accountant = RdpAccountant()
        accountant.compose(event, releases)
        return float(accountant.get_epsilon(self.delta))


class Privacy:
    """Client-level Gaussian differential privacy (see the module docstring).

    Args:
        placement: ``"none"``, ``"local"`` (clients clip and add noise) or ``"central"`` (the
            server clips every row and adds noise to the aggregate).
        clip: ``C``, the norm every update is clipped to, in update units (model deltas).
        noise_multiplier: ``sigma``: the noise's standard deviation is ``sigma C`` per client
            (local) or on the clipped sum (central). 0 clips without noise (epsilon is inf).
        delta: the delta at which epsilon is reported; below ``1 / num_clients`` for a
            meaningful client-level guarantee.
    """

    def __init__(
        self,
        placement: str = "none",
        clip: float | None = None,
        noise_multiplier: float = 0.0,
        delta: float = 1e-5,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"privacy.placement={placement!r} is invalid: use one of {', '.join(PLACEMENTS)}."
            )
        self.placement = placement
        self.active = placement != "none"
        if self.active:
            if clip is None or not clip > 0 or not math.isfinite(clip):
                raise ConfigError(
                    f"privacy.clip={clip} is invalid: the clipping norm must be a finite number "
                    "> 0, in update units (the norm of a client's model delta)."
                )
            if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
                raise ConfigError(
                    f"privacy.noise_multiplier={noise_multiplier} is invalid: it must be a "
                    "finite number >= 0 (0 clips without noise)."
                )
            if not 0 < delta < 1:
                raise ConfigError(f"privacy.delta={delta} is invalid: it must be in (0, 1).")
        self.clip = clip
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.participations: Tensor | None = None
        self.accountant: PrivacyAccountant | None = None

    def bind(self, num_clients: int, clients_per_round: int) -> None:
        """Learn the federation's size before the first round (called once)."""
        if self.placement == "local":  # the local account follows each client's releases
            self.participations = torch.zeros(num_clients, dtype=torch.long)
        self.accountant = PrivacyAccountant(
            self.placement, self.noise_multiplier, self.delta, clients_per_round / num_clients
        )

    def privatize_messages(
        self, updates: Tensor, clients: Tensor, generator: torch.Generator
    ) -> None:
        """Local placement: replace the rows of ``updates (n, d)``, those of ``clients (n,)``,
        by their Gaussian mechanism, in place, and count the clients' releases."""
        if self.placement != "local":
            return
        assert self.participations is not None, "bind() first"
        self.participations[clients.cpu()] += 1
        gaussian_mechanism_(updates, self.clip, self.noise_multiplier, generator)

    def clip_received(self, updates: Tensor) -> Tensor:
        """Central placement: the server clips every received row ``(n, d)``."""
        return clip_rows(updates, self.clip) if self.placement == "central" else updates

    def noise_aggregate(self, aggregate: Tensor, rows: int, generator: torch.Generator) -> Tensor:
        """Central placement: the aggregate ``(d,)`` of ``rows`` rows with the noise added."""
        if self.placement != "central":
            return aggregate
        return noised_aggregate(aggregate, rows, self.clip, self.noise_multiplier, generator)

    def epsilon(self, rounds: int) -> float:
        """Privacy spent after ``rounds`` rounds (see :class:`PrivacyAccountant`)."""
        if not self.active or self.accountant is None:
            return 0.0
        if self.placement == "local":
            assert self.participations is not None
            return self.accountant.epsilon(int(self.participations.max()))
        return self.accountant.epsilon(rounds)

    def describe(self) -> dict[str, Any]:
        """The mechanism's parameters, for the run's summary."""
        if not self.active:
            return {"placement": "none"}
        return {
            "placement": self.placement,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "accountant": "dp_accounting RDP, add-or-remove-one-client",
            "guarantee": GUARANTEES[self.placement],
        }

    def state_dict(self) -> dict[str, Any]:
        return {} if self.participations is None else {"participations": self.participations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "participations" in state and self.participations is not None:
            self.participations.copy_(state["participations"])
