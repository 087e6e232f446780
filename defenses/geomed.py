"""Geometric median by smoothed Weiszfeld iterations: RFA (Pillutla, Kakade and Harchaoui
2022, IEEE Transactions on Signal Processing)."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import median_norm_row, zero_nonfinite


def geometric_median(
    updates: Tensor,
    weights: Tensor | None = None,
    nu: float = 1e-6,
    iterations: int = 100,
    tol: float = 1e-6,
    init: str = "mean",
) -> tuple[Tensor, int]:
    """Approximate ``argmin_v sum_i a_i ||v - u_i||`` of ``updates (n, d)`` -> ``(d,)``.

    Smoothed Weiszfeld (RFA, Algorithm 2): starting from the weighted mean (``init="mean"``;
    or, if huge rows make its distances overflow, from the finite row of median norm) or from
    the zero vector (``init="zero"``, as the ByzFL library does),
    ``v <- sum_i b_i u_i / sum_i b_i`` with ``b_i = a_i / max(nu, ||v - u_i||)``, until the
    objective improves by less than ``tol`` relative to its value, or ``iterations`` passes.
    Rows with a non-finite entry get weight 0 (an infinitely distant point has no pull).
    Returns the estimate and the number of iterations run.

    Every iterate is a convex combination ``w @ updates`` of the rows, so the iterations run on
    the ``(n, n)`` Gram matrix of the rows centered on the finite row of median norm (as
    :func:`~robustfl.linalg.pairwise_sq_distances` does, for float32 accuracy), in float64:
    ``||u_i - v||^2 = G_ii - 2 (G w)_i + w' G w``. Only the Gram matrix and the final estimate
    touch the ``d`` coordinates, whatever the number of iterations. When huge rows overflow
    the Gram matrix, the iterations run on the rows directly instead.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)  # one pass: finiteness and the centering row
    finite = torch.isfinite(norms)
    alpha = torch.ones(len(updates), dtype=updates.dtype, device=updates.device)
    if weights is not None:
        alpha = weights.to(updates.dtype).clone()
    alpha = torch.where(finite, alpha, torch.zeros_like(alpha))
    if not bool((alpha > 0).any()):
        return torch.full_like(updates[0], torch.nan), 0
    points = zero_nonfinite(updates, finite)
    on_gram = _weiszfeld_on_gram(points, norms.where(finite, 0.0), alpha, nu, iterations, tol, init)
    if on_gram is not None:
        return on_gram
    return _weiszfeld_on_rows(points, alpha, nu, iterations, tol, init)


def _weiszfeld_on_gram(
    points: Tensor,
    norms: Tensor,
    alpha: Tensor,
    nu: float,
    iterations: int,
    tol: float,
    init: str,
) -> tuple[Tensor, int] | None:
    """Smoothed Weiszfeld in the coefficients ``w`` of ``v = w @ points`` (``norms``: the rows'
    norms); ``None`` when the centered Gram matrix is not finite."""
    usable = alpha > 0
    centered = points - points[median_norm_row(norms, usable)]
    gram = (centered @ centered.T).double()
    if not bool(torch.isfinite(gram).all()):
        return None
    a = alpha.double()
    diag = gram.diagonal()

    def distances(w: Tensor) -> Tensor:
        gw = gram @ w
        return (diag - 2.0 * gw + w @ gw).clamp(min=0.0).sqrt()

    w = a / a.sum()
    dist = norms.double() if init == "zero" else distances(w)
    objective = float(a @ dist)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the count is returned
        beta = a / dist.clamp(min=nu)
        w = beta / beta.sum()
        dist = distances(w)
        new_objective = float(a @ dist)
        if abs(objective - new_objective) <= tol * new_objective:
            break
        objective = new_objective
    return w.to(points.dtype) @ points, done


def _weiszfeld_on_rows(
    points: Tensor, alpha: Tensor, nu: float, iterations: int, tol: float, init: str
) -> tuple[Tensor, int]:
    """Smoothed Weiszfeld on the rows themselves (distances by subtraction): the fallback for
    rows too large for a Gram matrix."""

    def distances(v: Tensor) -> Tensor:
        dist = torch.linalg.vector_norm(points - v, dim=1)
        return torch.where(torch.isfinite(dist), dist, torch.full_like(dist, torch.inf))

    estimate = torch.zeros_like(points[0]) if init == "zero" else alpha @ points / alpha.sum()
    dist = distances(estimate)
    if not bool(torch.isfinite(dist[alpha > 0]).all()):
        # Huge rows pulled the mean so far that distances overflow: start instead from the
        # finite row of median norm (the fixed point does not depend on the start).
        norms = torch.linalg.vector_norm(points, dim=1)
        estimate = points[median_norm_row(norms, alpha > 0)]
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
        tol: stop when the objective's relative improvement falls below it (as RFA's code
            does). This bounds the objective's progress, not the distance to the minimiser:
            at ``tol = 1e-6`` the estimate can still be of order ``1e-3`` (relative) away from
            the exact geometric median; ``tol = 0`` with more ``iterations`` gets closer.
        weighted: weight clients by sample counts, as RFA does (``a_i = n_i``).
        init: ``mean`` (default) or ``zero``, the first estimate. With few iterations the
            start matters: ByzFL runs 3 iterations from zero with ``nu = 0.1``.
    """

    rotation_equivariant = True  # distances only

    def __init__(
        self,
        nu: float = 1e-6,
        iterations: int = 100,
        tol: float = 1e-6,
        weighted: bool = False,
        init: str = "mean",
    ) -> None:
        super().__init__()
        if init not in ("mean", "zero"):
            raise ConfigError(f"defense.init={init!r} is invalid: use 'mean' or 'zero'.")
        self.init = init
        if nu <= 0:
            raise ConfigError(f"defense.nu={nu} is invalid: it must be > 0.")
        if iterations < 1:
            raise ConfigError(f"defense.iterations={iterations} is invalid: it must be >= 1.")
        if tol < 0:
            raise ConfigError(f"defense.tol={tol} is invalid: it must be >= 0.")
        self.nu, self.iterations, self.tol, self.weighted = nu, iterations, tol, weighted
        self.uses_client_identity = weighted
        self._weights: Tensor | None = None
        self.last_iterations = 0

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        self._weights = ctx.sample_counts if self.weighted else None

    def __call__(self, updates: Tensor) -> Tensor:
        out, self.last_iterations = geometric_median(
            updates, self._weights, self.nu, self.iterations, self.tol, self.init
        )
        return out
