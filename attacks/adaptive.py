"""An adaptive attack: searches, against the actual defense, the scale of a perturbation that
pushes the aggregate furthest from the honest mean (generalizing the AGR-tailored attacks of
Shejwalkar and Houmansadr 2021 to any defense, including ones added later; with the line
search and ByzFL's shapes it is ByzFL's "optimal" ALIE and IPM)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from attacks.common import check_sign, repeat_row, unit_vector
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError
from robustfl.kernels import mean_and_std

Shape = Literal["alie", "ipm", "minmax"]
Search = Literal["grid", "line"]


def direction(
    rows: Tensor, shape: Shape, sign: int = -1, unbiased: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mu, base, p)`` for the pseudo-gradients ``rows (m, d)``: ``mu`` their mean, and the
    candidates ``base + gamma * p``, ``gamma >= 0``:

    - ``"alie"``: ``mu + sign * gamma * sigma`` (``sign = -1``: ALIE's published direction;
      ``+1``: ByzFL's ``ALittleIsEnough``);
    - ``"ipm"``: ``-gamma * mu`` (IPM's ``epsilon``, ByzFL's ``tau``);
    - ``"minmax"``: ``mu - gamma * mu / ||mu||`` (min-max's inverse unit vector).
    """
    if shape == "alie":
        mu, sigma = mean_and_std(rows, unbiased)
        return mu, mu, sign * sigma
    mu = rows.mean(dim=0)
    if shape == "ipm":
        return mu, torch.zeros_like(mu), -mu
    if shape == "minmax":
        return mu, mu, -unit_vector(mu)
    raise ConfigError(f"attack.shape={shape!r} is invalid: use 'alie', 'ipm' or 'minmax'.")


@dataclass(frozen=True)
class Span:
    """Rows ``(h, k)`` and vectors ``(k,)`` as float64 coordinates in an orthonormal basis of
    their span, and, when asked for, the basis ``(k, d)`` (in the input dtype):
    ``rows = coordinates @ basis``."""

    honest: Tensor
    vectors: tuple[Tensor, ...]
    basis: Tensor | None


def in_span_coordinates(
    honest: Tensor, vectors: tuple[Tensor, ...], with_basis: bool = False
) -> Span | None:
    """Coordinates of ``honest (h, d)`` and each of ``vectors`` (each ``(d,)``) in an
    orthonormal basis of their span, of dimension ``k <= h + len(vectors)``.

    From the eigendecomposition ``G = V diag(lambda) V'`` of their float64 Gram matrix: the
    rows of ``V diag(sqrt(lambda))`` have the inputs' inner products (what any orthonormal
    basis gives), and ``diag(1 / sqrt(lambda)) V'`` times the inputs is the basis; directions
    with ``lambda`` below ``1e-12`` of the largest (rank deficiency: ``mu`` is the mean of
    the honest rows) are dropped. Every candidate matrix lies in that span, so a
    rotation-equivariant rule gives the same damage on the coordinates. ``None`` when an
    input is not finite, all are zero, or ``d`` is not larger than the number of inputs
    (then the attack evaluates the full rows). The basis costs one more ``(k, d)`` product;
    it is built with ``with_basis``.
    """
    stacked = torch.cat([honest, *(v[None] for v in vectors)]).double()
    if stacked.shape[0] >= stacked.shape[1]:
        return None
    gram = stacked @ stacked.T
    if not bool(torch.isfinite(gram).all()):
        return None
    values, eigenvectors = torch.linalg.eigh(gram)
    keep = values > 1e-12 * values.max()
    if not bool(keep.any()):
        return None
    values, eigenvectors = values[keep], eigenvectors[:, keep]
    coordinates = eigenvectors * values.sqrt()
    basis = ((eigenvectors / values.sqrt()).T @ stacked).to(honest.dtype) if with_basis else None
    h = len(honest)
    return Span(coordinates[:h], tuple(coordinates[h:]), basis)


def line_maximize(
    objective: Callable[[float], float],
    evals: int = 20,
    start: float = 0.0,
    delta: float = 10.0,
    ratio: float = 0.8,
) -> float:
    """Best-effort ``argmax_x objective(x)`` with ``evals`` evaluations: the search of ByzFL
    0.0.11's ``Optimal_InnerProductManipulation`` and ``Optimal_ALittleIsEnough`` (defaults
    ``evals=20, start=0, delta=10, ratio=0.8``).

    Expansion: from ``start``, try ``best + delta``, doubling ``delta`` after every improvement,
    until a try fails (then ``delta *= ratio``). Contraction: try ``best + delta`` with every
    remaining evaluation, keeping the best, ``delta *= ratio`` after each. Ties keep the earlier
    point.
    """
    best_x, best_y = start, objective(start)
    evals -= 1
    while evals > 0:  # expansion
        x = best_x + delta
        y = objective(x)
        evals -= 1
        if y > best_y:
            best_x, best_y = x, y
            delta *= 2
        else:
            delta *= ratio
            break
    while evals > 0:  # contraction: forward from the best
        x = best_x + delta
        y = objective(x)
        evals -= 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x


def grid_maximize(
    objective: Callable[[float], float],
    gamma_min: float = 0.01,
    gamma_max: float = 100.0,
    size: int = 21,
    refine: int = 2,
) -> float:
    """``argmax`` of ``objective`` over 0 and ``size`` log-spaced values in ``[gamma_min,
    gamma_max]``, then ``refine`` times over 7 evenly spaced values strictly between the best
    value's neighbours (in increasing order of all values tried so far). Ties keep the
    smaller value."""
    values = torch.logspace(math.log10(gamma_min), math.log10(gamma_max), size, dtype=torch.float64)
    grid = [0.0, *values.tolist()]
    scores = {gamma: objective(gamma) for gamma in grid}
    for _ in range(refine):
        tried = sorted(scores)
        best = max(range(len(tried)), key=lambda i: scores[tried[i]])
        lo, hi = tried[max(best - 1, 0)], tried[min(best + 1, len(tried) - 1)]
        for gamma in torch.linspace(lo, hi, 9, dtype=torch.float64).tolist()[1:-1]:
            if gamma not in scores:
                scores[gamma] = objective(gamma)
    return max(sorted(scores), key=scores.__getitem__)


class Adaptive(Attack):
    """Search over ``gamma >= 0`` maximizing ``||aggregate(G(gamma)) - mu||``, where ``G(gamma)``
    is this round's matrix of pseudo-gradients with every Byzantine row set to
    ``base + gamma * p`` (:func:`direction`) and ``mu`` the mean of the observed honest rows.

    **What the attacker may use.** With ``knowledge="omniscient"`` the true honest rows. With
    ``knowledge="local"`` only its own clients' honest rows: the direction comes from them, and
    the simulated honest rows are drawn as ``N(mu, sigma^2)`` per coordinate from their mean and
    std (ALIE's model of the honest updates), from the attack's own random stream. The defense
    is queried on copies (``Defense.simulate``; its state untouched); a randomized rule
    (bucketing, DnC, noise) draws from the attack's own stream, so the attacker does not see
    the server's draws of the round. ``server_randomness=True`` hands the copies the server's
    generator state instead (a worst-case attacker who knows the server's random draws).

    **Span.** When the defense declares ``rotation_equivariant`` (it uses only inner products of
    the rows: mean, Krum, geometric median, clipping, NNM, ...) and ``project`` is on, each
    candidate is evaluated on the coordinates of the rows in an orthonormal basis of their span
    (:func:`in_span_coordinates`), in float64: the same damage, at a cost that does not grow
    with ``d``. For a pipeline whose first pre-aggregators are equivariant in front of a
    coordinate-wise rule, those stages run on the coordinates and only the rest on the rows
    mapped back to ``d`` coordinates.

    Searches: ``grid`` (:func:`grid_maximize`, ``1 + grid_size + 7 * refine`` evaluations) or
    ``line`` (ByzFL's, :func:`line_maximize`, ``evals`` evaluations).

    Args:
        shape: the perturbation (:func:`direction`).
        sign: the ALIE shape's direction, ``-1`` (published) or ``+1`` (ByzFL).
        search: ``grid`` or ``line``.
        gamma_min, gamma_max, grid_size, refine: the grid search.
        evals, start, delta, ratio: the line search (ByzFL 0.0.11's defaults).
        project: evaluate in the span of the rows when the defense allows it (see above).
        server_randomness: let the simulations see the server's random draws (see above).
        knowledge: ``omniscient`` (default) or ``local`` (see above).
    """

    simulates_defense = True

    def __init__(
        self,
        shape: Shape = "alie",
        sign: int = -1,
        search: Search = "grid",
        gamma_min: float = 0.01,
        gamma_max: float = 100.0,
        grid_size: int = 21,
        refine: int = 2,
        evals: int = 20,
        start: float = 0.0,
        delta: float = 10.0,
        ratio: float = 0.8,
        unbiased: bool = True,
        project: bool = True,
        server_randomness: bool = False,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        if shape not in ("alie", "ipm", "minmax"):
            raise ConfigError(f"attack.shape={shape!r} is invalid: use 'alie', 'ipm' or 'minmax'.")
        check_sign(sign)
        if search not in ("grid", "line"):
            raise ConfigError(f"attack.search={search!r} is invalid: use 'grid' or 'line'.")
        if evals < 1 or start < 0 or delta <= 0 or not 0.5 < ratio < 1:
            raise ConfigError(
                f"attack.evals={evals}, start={start}, delta={delta}, ratio={ratio}: the line "
                "search needs evals >= 1, start >= 0, delta > 0 and 0.5 < ratio < 1."
            )
        if not 0 < gamma_min < gamma_max:
            raise ConfigError(
                f"attack.gamma_min={gamma_min}, gamma_max={gamma_max}: need "
                "0 < gamma_min < gamma_max."
            )
        if grid_size < 2 or refine < 0:
            raise ConfigError("attack.grid_size must be >= 2 and attack.refine >= 0.")
        self.shape, self.sign, self.search = shape, sign, search
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.grid_size, self.refine = grid_size, refine
        self.evals, self.start, self.delta, self.ratio = evals, start, delta, ratio
        self.unbiased, self.project, self.server_randomness = unbiased, project, server_randomness
        self.last_gamma: float | None = None

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        observed = self.observed(honest, byzantine)
        mu, base, p = direction(observed, self.shape, self.sign, self.unbiased)
        if self.knowledge == "local":
            honest = self._stand_ins(observed, ctx)
        damage = self._damage(honest, mu, base, p, ctx)
        if self.search == "line":
            self.last_gamma = line_maximize(damage, self.evals, self.start, self.delta, self.ratio)
        else:
            self.last_gamma = grid_maximize(
                damage, self.gamma_min, self.gamma_max, self.grid_size, self.refine
            )
        return repeat_row(base + self.last_gamma * p, len(byzantine))

    def _stand_ins(self, observed: Tensor, ctx: RoundContext) -> Tensor:
        """``(h, d)`` simulated honest rows from the attacker's own rows (see the class)."""
        mu, sigma = mean_and_std(observed, self.unbiased)
        h = ctx.num_clients - ctx.num_byzantine
        noise = torch.randn(h, observed.shape[1], generator=ctx.generator, dtype=observed.dtype)
        return mu + sigma * noise.to(observed.device)

    def _damage(
        self, honest: Tensor, mu: Tensor, base: Tensor, p: Tensor, ctx: RoundContext
    ) -> Callable[[float], float]:
        """``gamma -> ||aggregate - mu||`` on copies of the defense, which sees updates (minus
        the pseudo-gradients): on span coordinates when the whole defense is
        rotation-equivariant, with only the tail after an equivariant head on the full rows
        when it is a pipeline with one, else on the full rows."""
        defense = ctx.defense
        generator = None if self.server_randomness else ctx.generator
        head_size = 0  # equivariant stages in front of a rule that is not
        if not defense.rotation_equivariant:
            split = getattr(defense, "split_equivariant", None)
            head_size = len(split()[0]) if split is not None else 0
        span = None
        if self.project and (defense.rotation_equivariant or head_size):
            span = in_span_coordinates(honest, (mu, base, p), with_basis=head_size > 0)
        honest_c, (mu_c, base_c, p_c) = (
            (honest, (mu, base, p)) if span is None else (span.honest, span.vectors)
        )
        updates = torch.empty(
            ctx.num_clients, honest_c.shape[1], dtype=honest_c.dtype, device=honest.device
        )
        is_byz = torch.zeros(ctx.num_clients, dtype=torch.bool, device=honest.device)
        is_byz[ctx.byzantine_rows.to(honest.device)] = True
        updates[~is_byz] = -honest_c

        def aggregate_gap(candidate: Tensor) -> float:
            if span is None or head_size == 0:  # full rows, or all in the span
                return float(
                    torch.linalg.vector_norm(defense.simulate(candidate, generator) + mu_c)
                )
            head, tail = defense.simulation_copy(generator).split_equivariant()
            for stage in head:
                candidate = stage(candidate)
            lifted = candidate.to(span.basis.dtype) @ span.basis
            return float(torch.linalg.vector_norm(tail(lifted) + mu))

        def damage(gamma: float) -> float:
            updates[is_byz] = -(base_c + gamma * p_c)
            value = aggregate_gap(updates)
            return value if math.isfinite(value) else math.inf

        return damage
