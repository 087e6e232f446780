"""Client-level differential privacy with the Gaussian mechanism, in its two placements.

- **local**: every honest client clips its update to norm ``clip`` and adds
  ``N(0, (sigma clip)^2 I)`` itself, before anything leaves it; the server and the other
  clients are not trusted. Attackers apply no mechanism (unless the protocol enforces the
  clipping, ``enforced``).
- **central** (DP-FedAvg, McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially
  Private Recurrent Language Models"): the clients send their updates to a trusted server,
  which clips every row to ``clip``, aggregates, and adds ``N(0, (sigma clip / m)^2 I)`` to
  the aggregate of the round's rows, ``m`` being the fixed expected round size ``q N`` under
  Poisson sampling (the aggregate is rescaled to that denominator) or the round's fixed size;
  only the noised models are released.

Privacy is **client-level**: neighbouring federations differ in one client's entire data.
The privacy spent is computed by Google's ``dp_accounting`` (RDP or PLD accountant), never by
hand, for the sampling that ran: :class:`PrivacyAccountant` says what it assumes in each case,
``docs/privacy-and-compression.md`` states the threat model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from robustfl.errors import ConfigError
from robustfl.linalg import clip_rows, clip_scales, row_norms

log = logging.getLogger(__name__)

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


#: How each round picks its clients (``fl.sampling``).
SAMPLINGS = ("fixed", "poisson")
ACCOUNTANTS = ("rdp", "pld")


class PrivacyAccountant:
    """Epsilon at ``delta`` after some releases, from ``dp_accounting`` (its Renyi DP
    accountant, ``"rdp"``, or its privacy-loss-distribution accountant, ``"pld"``, tighter).

    What each account assumes (``docs/privacy-and-compression.md``):

    - **central, Poisson sampling** (``fl.sampling=poisson``, DP-FedAvg as McMahan et al. 2018
      define it): every client takes part with probability ``q`` independently and the noised
      sum is divided by the fixed ``q N``; add-or-remove-one-client adjacency, sensitivity
      ``C``: ``rounds`` Poisson-subsampled Gaussians of multiplier ``sigma``.
    - **central, fixed-size sampling** (exactly ``m`` of ``N`` clients a round): a client who
      joins pushes another out, so the valid account is replace-one, where the clipped sum's
      sensitivity is ``2C``: ``rounds`` Gaussians of multiplier ``sigma / 2`` on ``m`` of ``N``
      sampled without replacement (RDP only: the PLD accountant has no such event). Much
      larger than the Poisson account.
    - **local**: the server sees who sends what, so sampling does not amplify privacy, and a
      client's message changes by up to ``2C`` between any two of its inputs (replace-one): a
      client that sent ``k`` messages released ``k`` Gaussians of multiplier ``sigma / 2``.

    ``dp_accounting``'s RDP Gaussian assumes sensitivity 1, so the multiplier is halved here
    for replace-one; its PLD accountant scales to the relation's sensitivity itself.
    """

    def __init__(
        self,
        placement: str,
        noise_multiplier: float,
        delta: float,
        num_clients: int,
        clients_per_round: int,
        sampling: str = "fixed",
        accountant: str = "rdp",
    ) -> None:
        self.placement, self.noise_multiplier, self.delta = placement, noise_multiplier, delta
        self.num_clients, self.clients_per_round = num_clients, clients_per_round
        self.sampling, self.accountant = sampling, accountant
        if self.replace_one and accountant == "pld" and placement == "central":
            if clients_per_round < num_clients:
                raise ConfigError(
                    "privacy.accountant=pld cannot account fixed-size client sampling (no "
                    "sampling-without-replacement event in its PLD accountant): use "
                    "privacy.accountant=rdp, or fl.sampling=poisson."
                )

    @property
    def replace_one(self) -> bool:
        """Whether the account is replace-one (else add-or-remove-one)."""
        return self.placement == "local" or self.sampling == "fixed"

    @property
    def assumption(self) -> str:
        """The account in words, for the run's summary."""
        relation = "replace-one" if self.replace_one else "add-or-remove-one"
        if self.placement == "local":
            how = "each honest client's own releases, the most any honest client sent"
        elif self.sampling == "poisson":
            how = f"Poisson sampling at q = {self.clients_per_round / self.num_clients:g}"
        else:
            how = (
                f"{self.clients_per_round} of {self.num_clients} clients sampled without "
                "replacement each round"
            )
        return f"dp_accounting {self.accountant.upper()}, {relation} client, {how}"

    def event(self) -> Any:
        """One release as a ``dp_accounting`` event."""
        import dp_accounting

        sigma = self.noise_multiplier
        if self.replace_one and self.accountant == "rdp":
            sigma /= 2  # sensitivity 2C, and the RDP Gaussian assumes sensitivity 1
        gaussian = dp_accounting.GaussianDpEvent(sigma)
        if self.placement == "local" or self.clients_per_round >= self.num_clients:
            return gaussian
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(
                self.clients_per_round / self.num_clients, gaussian
            )
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.num_clients, self.clients_per_round, gaussian
        )

    def epsilon(self, releases: int) -> float:
        """Epsilon after ``releases`` releases: for ``local``, the most messages any honest
        client sent; for ``central``, the rounds run. ``inf`` without noise."""
        if releases == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        import dp_accounting
        from dp_accounting.pld import PLDAccountant
        from dp_accounting.rdp import RdpAccountant

        relation = dp_accounting.NeighboringRelation
        relation = relation.REPLACE_ONE if self.replace_one else relation.ADD_OR_REMOVE_ONE
        kind = RdpAccountant if self.accountant == "rdp" else PLDAccountant
        quiet = logging.getLogger("absl")  # RDP orders that do not converge are dropped, loudly
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            accountant = kind(neighboring_relation=relation)
            accountant.compose(self.event(), releases)
            return float(accountant.get_epsilon(self.delta))
        finally:
            quiet.setLevel(level)


class Privacy:
    """Client-level Gaussian differential privacy (see the module docstring).

    Args:
        placement: ``"none"``, ``"local"`` (clients clip and add noise) or ``"central"`` (the
            server clips every row and adds noise to the aggregate).
        clip: ``C``, the norm every update is clipped to, in update units (model deltas).
        noise_multiplier: ``sigma``: the noise's standard deviation is ``sigma C`` per client
            (local) or on the clipped sum (central). 0 clips without noise (epsilon is inf).
        delta: the delta at which epsilon is reported; below ``1 / num_clients`` for a
            meaningful client-level guarantee (a warning says so otherwise).
        accountant: ``"rdp"`` (default) or ``"pld"`` (tighter; Poisson or no sampling only).
        enforced: local placement: whether the protocol enforces the clipping on every
            message (e.g. secure aggregation with a norm check), so that Byzantine clients'
            messages are clipped to ``clip`` too. By default they are not: an attacker does
            not apply a mechanism that limits it, and its messages leave as it crafts them.
    """

    def __init__(
        self,
        placement: str = "none",
        clip: float | None = None,
        noise_multiplier: float = 0.0,
        delta: float = 1e-5,
        accountant: str = "rdp",
        enforced: bool = False,
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
            if accountant not in ACCOUNTANTS:
                raise ConfigError(
                    f"privacy.accountant={accountant!r} is invalid: use 'rdp' or 'pld'."
                )
        self.accountant_kind, self.enforced = accountant, bool(enforced)
        self.clip = clip
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.participations: Tensor | None = None
        self.accountant: PrivacyAccountant | None = None

    def bind(self, num_clients: int, clients_per_round: int, sampling: str = "fixed") -> None:
        """Learn the federation's size and sampling before the first round (called once)."""
        if not self.active:
            return
        if self.placement == "local":  # the local account follows each client's releases
            self.participations = torch.zeros(num_clients, dtype=torch.long)
        self.expected_rows = clients_per_round if sampling == "fixed" else None
        self.rate = clients_per_round / num_clients
        self.accountant = PrivacyAccountant(
            self.placement,
            self.noise_multiplier,
            self.delta,
            num_clients,
            clients_per_round,
            sampling,
            self.accountant_kind,
        )
        self.num_clients = num_clients
        if self.delta >= 1 / num_clients:
            log.warning(
                "privacy.delta=%g is not below 1 / fl.num_clients = %g: a mechanism that "
                "publishes one client's data outright satisfies such a delta",
                self.delta,
                1 / num_clients,
            )

    def privatize_messages(
        self, updates: Tensor, clients: Tensor, honest: Tensor, generator: torch.Generator
    ) -> None:
        """Local placement: replace the honest rows of ``updates (n, d)`` (``honest (n,)``
        bool; ``clients (n,)`` their ids) by their Gaussian mechanism, in place, and count
        those clients' releases. Byzantine rows are left as they are, or clipped when the
        protocol enforces clipping (:meth:`enforce`)."""
        if self.placement != "local":
            return
        assert self.participations is not None, "bind() first"
        self.participations[clients[honest.cpu()].cpu()] += 1
        rows = torch.nonzero(honest).flatten().to(updates.device)
        if len(rows) == len(updates):
            gaussian_mechanism_(updates, self.clip, self.noise_multiplier, generator)
        elif len(rows):
            honest_rows = updates.index_select(0, rows)
            updates[rows] = gaussian_mechanism_(
                honest_rows, self.clip, self.noise_multiplier, generator
            )
        self.enforce(updates, ~honest)

    def enforce(self, updates: Tensor, byzantine: Tensor) -> None:
        """Local placement with ``enforced``: clip the Byzantine rows of ``updates`` to
        ``clip`` in place (the protocol rejects longer messages); otherwise nothing."""
        if self.placement != "local" or not self.enforced or not bool(byzantine.any()):
            return
        rows = torch.nonzero(byzantine).flatten().to(updates.device)
        updates[rows] = clip_rows(updates.index_select(0, rows), self.clip)

    def clip_received(self, updates: Tensor) -> Tensor:
        """Central placement: the server clips every received row ``(n, d)``."""
        return clip_rows(updates, self.clip) if self.placement == "central" else updates

    def noise_aggregate(self, aggregate: Tensor, rows: int, generator: torch.Generator) -> Tensor:
        """Central placement: the aggregate ``(d,)`` of ``rows`` rows with the noise added.
        With Poisson sampling the denominator is the fixed expected count ``q N``, as in
        DP-FedAvg: the aggregate (an average of the ``rows``) is rescaled to ``sum / (q N)``."""
        if self.placement != "central":
            return aggregate
        if self.expected_rows is None:  # Poisson sampling
            expected = self.rate * self.num_clients
            aggregate = aggregate * (rows / expected)
            rows = expected
        return noised_aggregate(aggregate, rows, self.clip, self.noise_multiplier, generator)

    def epsilon(self, rounds: int) -> float:
        """Privacy spent after ``rounds`` rounds (see :class:`PrivacyAccountant`)."""
        if not self.active or self.accountant is None:
            return 0.0
        if self.placement == "local":
            assert self.participations is not None
            return self.accountant.epsilon(int(self.participations.max()))
        return self.accountant.epsilon(rounds)

    def scope(self, defense: Any) -> tuple[bool, str]:
        """Whether the epsilon covers the release of a run aggregated by ``defense``, and
        why: local DP protects each honest message whatever the server computes from it;
        central DP's account bounds the mean of the clipped rows only (a robust or weighted
        rule can depend more on one client)."""
        if self.placement == "local":
            return True, "covered: local DP protects every honest message, whatever the rule"
        if defense.plain_mean:
            return True, "covered: the rule is the mean of the clipped rows (DP-FedAvg)"
        return False, (
            "not covered: central DP's epsilon bounds the mean of the clipped rows; this rule "
            "can depend more on one client"
        )

    def describe(self) -> dict[str, Any]:
        """The mechanism's parameters, for the run's summary."""
        if not self.active:
            return {"placement": "none"}
        return {
            "placement": self.placement,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "accountant": self.accountant.assumption if self.accountant else self.accountant_kind,
            "enforced": self.enforced,
            "guarantee": GUARANTEES[self.placement],
        }

    def state_dict(self) -> dict[str, Any]:
        return {} if self.participations is None else {"participations": self.participations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "participations" in state and self.participations is not None:
            self.participations.copy_(state["participations"])
