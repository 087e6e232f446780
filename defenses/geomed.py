"""Geometric median by smoothed Weiszfeld iterations: RFA (Pillutla, Kakade and Harchaoui
2022, IEEE Transactions on Signal Processing)."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import finite_rows, zero_nonfinite


def geometric_median(
    updates: Tensor,
    weights: Tensor | None = None,
    nu: float = 1e-6,
    iterations: int = 100,
    tol: float = 1e-6,
) -> tuple[Tensor, int]:
    """Approximate ``argmin_v sum_i a_i ||v - u_i||`` of ``updates (n, d)`` -> ``(d,)``.

    Smoothed Weiszfeld (RFA, Algorithm 2): starting from the weighted mean (or, if huge rows
    make its distances overflow, from the finite row of median norm),
    ``v <- sum_i b_i u_i / sum_i b_i`` with ``b_i = a_i / max(nu, ||v - u_i||)``, until the
    objective improves by less than ``tol`` relative to its value, or ``iterations`` passes.
    Rows with a non-finite entry get weight 0 (an infinitely distant point has no pull).
    Returns the estimate and the number of iterations run.
    """
    finite = finite_rows(updates)
    alpha = torch.ones(len(updates), dtype=updates.dtype, device=updates.device)
    if weights is not None:
        alpha = weights.to(updates.dtype).clone()
    alpha = torch.where(finite, alpha, torch.zeros_like(alpha))
    if not bool((alpha > 0).any()):
        return torch.full_like(updates[0], torch.nan), 0
    points = zero_nonfinite(updates, finite)

    def distances(v: Tensor) -> Tensor:
        dist = torch.linalg.vector_norm(points - v, dim=1)
        return torch.where(torch.isfinite(dist), dist, torch.full_like(dist, torch.inf))

    estimate = alpha @ points / alpha.sum()
    dist = distances(estimate)
    if not bool(torch.isfinite(dist[alpha > 0]).all()):
        # Huge rows pulled the mean so far that distances overflow: start instead from the
        # finite row of median norm (the fixed point does not depend on the start).
        norms = torch.linalg.vector_norm(points, dim=1).masked_fill(alpha <= 0, torch.inf)
        estimate = points[torch.sort(norms, stable=True).indices[(int((alpha > 0).sum()) - 1) // 2]]
        dist = distances(estimate)
    objective = float((alpha * torch.where(alpha > 0, dist, 0.0)).sum())
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the count is returned
        beta = alpha / dist.clamp(min=nu)
        estimate = beta @ points / beta.sum()
        dist = distances(estimate)
        new_objective = float((alpha * torch.where(alpha > 0, dist, 0.0)).sum())
        if abs(objective - new_objective) <= tol * new_objective:
            break
        objective = new_objective
    return estimate, done


class GeometricMedian(Defense):
    """Robust Federated Aggregation: the geometric median of the updates.

    Args:
        nu: smoothing (``max(nu, distance)`` in the weights), RFA's ``nu``.
        iterations: at most this many Weiszfeld steps (the bucketing paper used 8 with
            ``nu = 0.1``).
        tol: stop when the objective's relative improvement falls below it.
        weighted: weight clients by sample counts, as RFA does (``a_i = n_i``).
    """

    def __init__(
        self, nu: float = 1e-6, iterations: int = 100, tol: float = 1e-6, weighted: bool = False
    ) -> None:
        super().__init__()
        if nu <= 0:
            raise ConfigError(f"defense.nu={nu} is invalid: it must be > 0.")
        if iterations < 1:
            raise ConfigError(f"defense.iterations={iterations} is invalid: it must be >= 1.")
        if tol < 0:
            raise ConfigError(f"defense.tol={tol} is invalid: it must be >= 0.")
        self.nu, self.iterations, self.tol, self.weighted = nu, iterations, tol, weighted
        self._weights: Tensor | None = None
        self.last_iterations = 0

    def prepare(self, ctx) -> None:
        self._weights = ctx.sample_counts if self.weighted else None

    def __call__(self, updates: Tensor) -> Tensor:
        weights = (
            self._weights
            if (self._weights is not None and len(self._weights) == len(updates))
            else None
        )
        out, self.last_iterations = geometric_median(
            updates, weights, self.nu, self.iterations, self.tol
        )
        return out
