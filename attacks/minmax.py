"""Min-max (AGR-agnostic) attack (Shejwalkar and Houmansadr 2021, NDSS: "Manipulating the
Byzantine"). :mod:`attacks.minsum` shares its machinery."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from attacks.common import repeat_row, unit_vector
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError
from robustfl.kernels import mean_and_std
from robustfl.linalg import pairwise_sq_distances

Perturbation = Literal["unit_vec", "std", "sign"]
Search = Literal["halving", "exact"]


def perturbation_vector(rows: Tensor, kind: Perturbation, unbiased: bool = True) -> Tensor:
    """The direction ``p (d,)`` added to the mean of the pseudo-gradients ``rows (m, d)``:
    ``-mu/||mu||`` (``"unit_vec"``), ``-sigma`` (``"std"``) or ``-sign(mu)`` (``"sign"``), the
    authors' "inverse unit vector", "inverse standard deviation" and "inverse sign". The first
    and last flip with the rows; ``-sigma`` does not, which is why attacks work on gradients."""
    if kind == "std":
        return -mean_and_std(rows, unbiased)[1]
    mu = rows.mean(dim=0)
    if kind == "unit_vec":
        return -unit_vector(mu)
    if kind == "sign":
        return -torch.sign(mu)
    raise ConfigError(f"attack.perturbation={kind!r} is invalid: use 'unit_vec', 'std' or 'sign'.")


def halving_search(
    feasible: Callable[[float], bool], gamma_init: float = 10.0, tol: float = 1e-5
) -> float:
    """The largest feasible ``gamma`` by the paper's search: start at ``gamma_init``; step up by
    half the current step after a success, down after a failure, halving the step each time,
    until the step is below ``tol``. Returns the last feasible value (0 if none); it cannot
    exceed ``2 * gamma_init``."""
    gamma, step, best = gamma_init, gamma_init, 0.0
    while abs(best - gamma) > tol:
        if feasible(gamma):
            best = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


class DistanceModel:
    """Squared distances from ``mu + gamma * p`` to each observed row, as quadratics in gamma:
    ``a_i + 2 gamma b_i + gamma^2 c`` (computed once in float64, so every trial gamma costs
    O(rows) instead of O(rows * d))."""

    def __init__(self, rows: Tensor, mu: Tensor, p: Tensor) -> None:
        diff = (mu - rows).double()
        p64 = p.double()
        self.a = (diff * diff).sum(dim=1)
        self.b = diff @ p64
        self.c = float(p64 @ p64)

    def sq_distances(self, gamma: float) -> Tensor:
        return self.a + 2.0 * gamma * self.b + gamma * gamma * self.c


def largest_root(c: float, b: Tensor, a: Tensor) -> Tensor:
    """Largest ``gamma`` with ``c gamma^2 + 2 b gamma + a <= 0`` (``a <= 0`` assumed)."""
    if c == 0.0:
        return torch.full_like(b, math.inf)
    return (-b + torch.sqrt((b * b - c * a).clamp(min=0.0))) / c


class MinMax(Attack):
    """Every Byzantine client sends ``mu + gamma * p`` (pseudo-gradients, as the paper's
    gradients) with the largest ``gamma`` such that its largest distance to an honest row stays
    within the largest distance between two honest rows:
    ``max_i ||m - h_i|| <= max_{i,j} ||h_i - h_j||``.

    Args:
        gamma: a fixed scale, or ``None`` (default) to search for it.
        perturbation: ``"unit_vec"`` (default, as in the authors' code), ``"std"`` or ``"sign"``.
        search: ``"halving"`` (default: the paper's search from ``gamma_init`` to ``tol``,
            as in the authors' and FLPoison's code) or ``"exact"`` (the closed-form largest
            root; Blades instead bisects on [0, 5]).
        gamma_init, tol: the halving search's start and stopping step.
        unbiased: sample or population std for ``perturbation="std"``.
        knowledge: ``omniscient`` (default, the paper's full-knowledge setting) or ``local``
            (the Byzantine clients' own honest rows stand in for the honest ones).
    """

    def __init__(
        self,
        gamma: float | None = None,
        perturbation: Perturbation = "unit_vec",
        search: Search = "halving",
        gamma_init: float = 10.0,
        tol: float = 1e-5,
        unbiased: bool = True,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        if perturbation not in ("unit_vec", "std", "sign"):
            raise ConfigError(
                f"attack.perturbation={perturbation!r} is invalid: use 'unit_vec', 'std' or 'sign'."
            )
        if search not in ("halving", "exact"):
            raise ConfigError(f"attack.search={search!r} is invalid: use 'halving' or 'exact'.")
        if gamma is not None and gamma < 0:
            raise ConfigError(f"attack.gamma={gamma} is invalid: use null (search) or >= 0.")
        if gamma_init <= 0 or tol <= 0:
            raise ConfigError("attack.gamma_init and attack.tol must be > 0.")
        self.gamma, self.perturbation, self.search = gamma, perturbation, search
        self.gamma_init, self.tol, self.unbiased = gamma_init, tol, unbiased
        self.last_gamma: float | None = None

    def bound(self, rows: Tensor) -> float:
        """The right-hand side: the largest squared distance between two observed rows."""
        return float(pairwise_sq_distances(rows.double()).max())

    def exact_gamma(self, model: DistanceModel, bound: float) -> float:
        return float(largest_root(model.c, model.b, model.a - bound).min())

    def feasible(self, model: DistanceModel, bound: float, gamma: float) -> bool:
        return float(model.sq_distances(gamma).max()) <= bound

    def find_gamma(self, rows: Tensor, mu: Tensor, p: Tensor) -> float:
        """The scale for this round: fixed, searched or exact (see the class docstring)."""
        if self.gamma is not None:
            return float(self.gamma)
        model, bound = DistanceModel(rows, mu, p), self.bound(rows)
        if self.search == "exact":
            return max(0.0, self.exact_gamma(model, bound))
        return halving_search(lambda g: self.feasible(model, bound, g), self.gamma_init, self.tol)

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        rows = self.observed(honest, byzantine)
        mu = rows.mean(dim=0)
        p = perturbation_vector(rows, self.perturbation, self.unbiased)
        self.last_gamma = self.find_gamma(rows, mu, p)
        return repeat_row(mu + self.last_gamma * p, len(byzantine))
