"""An adaptive attack: searches, against the actual defense, the scale of a perturbation that
pushes the aggregate furthest from the honest mean (generalizing the AGR-tailored attacks of
Shejwalkar and Houmansadr 2021 to any defense, including ones added later)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from attacks.base import Attack, mean_and_std, repeat_row
from robustfl.context import RoundContext
from robustfl.errors import ConfigError

Shape = Literal["alie", "ipm", "minmax"]
Search = Literal["grid", "line"]


def direction(rows: Tensor, shape: Shape, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """``(mu, p)``: candidates are ``mu + gamma * p`` with ``p = -sigma`` (ALIE-shaped),
    ``-mu`` (IPM-shaped: ``gamma = 1 + epsilon`` gives IPM's ``-epsilon mu``) or
    ``-mu / ||mu||`` (min-max-shaped)."""
    if shape == "alie":
        mu, sigma = mean_and_std(rows, unbiased)
        return mu, -sigma
    mu = rows.mean(dim=0)
    if shape == "ipm":
        return mu, -mu
    if shape == "minmax":
        return mu, -mu / torch.linalg.vector_norm(mu).clamp(min=torch.finfo(mu.dtype).tiny)
    raise ConfigError(f"attack.shape={shape!r} is invalid: use 'alie', 'ipm' or 'minmax'.")


@dataclass(frozen=True)
class Span:
    """The honest rows, ``mu`` and ``p`` as float64 coordinates ``(h, k)``, ``(k,)``, ``(k,)``
    in an orthonormal basis of their span, and, when asked for, the basis ``(k, d)`` (in the
    input dtype): ``rows = coordinates @ basis``."""

    honest: Tensor
    mu: Tensor
    p: Tensor
    basis: Tensor | None


def in_span_coordinates(
    honest: Tensor, mu: Tensor, p: Tensor, with_basis: bool = False
) -> Span | None:
    """Coordinates of ``honest (h, d)``, ``mu (d,)`` and ``p (d,)`` in an orthonormal basis of
    their span, of dimension ``k <= h + 2``.

    From the eigendecomposition ``G = V diag(lambda) V'`` of their float64 Gram matrix: the
    rows of ``V diag(sqrt(lambda))`` have the inputs' inner products (what any orthonormal
    basis gives), and ``diag(1 / sqrt(lambda)) V'`` times the inputs is the basis; directions
    with ``lambda`` below ``1e-12`` of the largest (rank deficiency: ``mu`` is the mean of
    the honest rows) are dropped. Every candidate matrix lies in that span, so a
    rotation-equivariant rule gives the same damage on the coordinates. ``None`` when an
    input is not finite, all are zero, or ``d <= h + 2`` (then the attack evaluates the full
    rows). The basis costs one more ``(k, d)`` product; it is built with ``with_basis``.
    """
    stacked = torch.cat([honest, mu[None], p[None]]).double()
    if stacked.shape[0] >= stacked.shape[1]:
        return None
    gram = stacked @ stacked.T
    if not bool(torch.isfinite(gram).all()):
        return None
    values, vectors = torch.linalg.eigh(gram)
    keep = values > 1e-12 * values.max()
    if not bool(keep.any()):
        return None
    values, vectors = values[keep], vectors[:, keep]
    coordinates = vectors * values.sqrt()
    basis = ((vectors / values.sqrt()).T @ stacked).to(honest.dtype) if with_basis else None
    return Span(coordinates[:-2], coordinates[-2], coordinates[-1], basis)


def line_maximize(
    objective: Callable[[float], float],
    evals: int = 16,
    start: float = 0.0,
    delta: float = 1.0,
    ratio: float = 0.8,
) -> float:
    """Best-effort ``argmax_{x >= 0} objective(x)`` with ``evals`` evaluations: the
    LineMaximize search of the ByzFL library (Allouah et al.'s "optimal" attacks).

    Expansion: from ``start``, step ``delta`` forward, doubling the step after every
    improvement, until a step fails; then contraction: the step shrinks by ``ratio`` after every
    evaluation, and the next point is the last one moved by the step towards the best one (a
    point that would fall below 0 is moved halfway back, repeatedly, instead). Ties keep the
    earlier point.
    """
    best_x, best_y = start, objective(start)
    evals -= 1
    probe = best_x
    while evals > 0:  # expansion
        probe = best_x + delta
        value = objective(probe)
        evals -= 1
        if value > best_y:
            best_x, best_y = probe, value
            delta *= 2
        else:
            delta *= ratio
            break
    while evals > 0:  # contraction
        if probe < best_x:
            probe += delta
        else:
            candidate = probe - delta
            while candidate < 0:
                candidate = (candidate + probe) / 2
            probe = candidate
        value = objective(probe)
        evals -= 1
        if value > best_y:
            best_x, best_y = probe, value
        delta *= ratio
    return best_x


class Adaptive(Attack):
    """Search over ``gamma >= 0`` maximizing ``||defense(U(gamma)) - mu||``, where
    ``U(gamma)`` is this round's matrix with every Byzantine row set to ``mu + gamma * p``.

    The defense is queried on copies (``ctx.defense.simulate``; state untouched). When the
    defense declares ``rotation_equivariant`` (it uses only inner products of the rows: mean,
    Krum, geometric median, clipping, NNM, ...) and ``project`` is on, each candidate is
    evaluated on the coordinates of the rows in an orthonormal basis of ``span(honest rows,
    mu, p)`` (:func:`in_span_coordinates`), in float64: the same damage (the aggregate lies in
    that span and the basis preserves distances), at a cost that no longer grows with ``d``.
    For a pipeline whose first pre-aggregators are equivariant (clipping, NNM, bucketing) in
    front of a coordinate-wise rule, those stages run on the coordinates and only the rest on
    the rows mapped back to ``d`` coordinates. Two searches:

    - ``grid`` (default): a geometric grid of ``grid_size`` values in ``[gamma_min,
      gamma_max]`` (plus 0), then ``refine`` times a finer grid between the neighbours of the
      best value (``1 + grid_size + 7 * refine`` evaluations);
    - ``line``: ByzFL's LineMaximize (:func:`line_maximize`) with ``evals`` evaluations from
      ``start`` with first step ``delta`` and contraction ``ratio`` -- the search of ByzFL's
      "optimal" ALIE and IPM. Its ``gamma`` is ByzFL's attack factor ``tau``: IPM-shaped rows
      ``(1 - tau) mu``, ALIE-shaped ``mu - tau sigma`` (ByzFL writes ``+ tau sigma`` on
      gradients; updates are their negatives).

    Args:
        shape: the perturbation (see :func:`direction`).
        search: ``grid`` or ``line``.
        gamma_min, gamma_max, grid_size, refine: the grid search.
        evals, start, delta, ratio: the line search (ByzFL's defaults).
        project: evaluate in the span of the rows when the defense allows it (see above).
        knowledge: ``omniscient`` (default; the attacker knows the honest updates and the
            defense) or ``local``.
    """

    poisons_updates = True

    def __init__(
        self,
        shape: Shape = "alie",
        gamma_min: float = 0.01,
        gamma_max: float = 100.0,
        grid_size: int = 21,
        refine: int = 2,
        unbiased: bool = True,
        knowledge: str = "omniscient",
        search: Search = "grid",
        evals: int = 16,
        start: float = 0.0,
        delta: float = 1.0,
        ratio: float = 0.8,
        project: bool = True,
    ) -> None:
        super().__init__(knowledge)
        if shape not in ("alie", "ipm", "minmax"):
            raise ConfigError(f"attack.shape={shape!r} is invalid: use 'alie', 'ipm' or 'minmax'.")
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
        self.shape, self.gamma_min, self.gamma_max = shape, gamma_min, gamma_max
        self.grid_size, self.refine, self.unbiased = grid_size, refine, unbiased
        self.search = search
        self.evals, self.start, self.delta, self.ratio = evals, start, delta, ratio
        self.project = project
        self.last_gamma: float | None = None

    def poison_updates(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        rows = self.observed(honest, byzantine)
        mu, p = direction(rows, self.shape, self.unbiased)
        damage = self._damage(honest, mu, p, ctx)
        if self.search == "line":
            self.last_gamma = line_maximize(damage, self.evals, self.start, self.delta, self.ratio)
        else:
            self.last_gamma = self._grid_search(damage)
        return repeat_row(mu + self.last_gamma * p, len(byzantine))

    def _damage(
        self, honest: Tensor, mu: Tensor, p: Tensor, ctx: RoundContext
    ) -> Callable[[float], float]:
        """``gamma -> ||defense(U(gamma)) - mu||`` on a copy of the defense: on span
        coordinates when the whole defense is rotation-equivariant, with only the tail after
        an equivariant head on the full rows when it is a pipeline with one, else on the
        full rows."""
        defense = ctx.defense
        head_size = 0  # equivariant stages in front of a rule that is not
        if not defense.rotation_equivariant:
            split = getattr(defense, "split_equivariant", None)
            head_size = len(split()[0]) if split is not None else 0
        span = None
        if self.project and (defense.rotation_equivariant or head_size):
            span = in_span_coordinates(honest, mu, p, with_basis=head_size > 0)
        # The rows the candidates are built from: span coordinates or the rows themselves.
        honest_c, mu_c, p_c = (honest, mu, p) if span is None else (span.honest, span.mu, span.p)
        matrix = torch.empty(
            ctx.num_clients, honest_c.shape[1], dtype=honest_c.dtype, device=honest.device
        )
        is_byz = torch.zeros(ctx.num_clients, dtype=torch.bool, device=honest.device)
        is_byz[ctx.byzantine_rows.to(honest.device)] = True
        matrix[~is_byz] = honest_c

        def aggregate_gap(candidate: Tensor) -> float:
            if span is None or head_size == 0:  # full rows, or all in the span
                return float(torch.linalg.vector_norm(defense.simulate(candidate) - mu_c))
            head, tail = copy.deepcopy(defense).split_equivariant()
            for stage in head:
                candidate = stage(candidate)
            lifted = candidate.to(span.basis.dtype) @ span.basis
            return float(torch.linalg.vector_norm(tail(lifted) - mu))

        def damage(gamma: float) -> float:
            matrix[is_byz] = mu_c + gamma * p_c
            value = aggregate_gap(matrix)
            return value if math.isfinite(value) else math.inf

        return damage

    def _grid_search(self, damage: Callable[[float], float]) -> float:
        grid = [
            0.0,
            *torch.logspace(
                math.log10(self.gamma_min),
                math.log10(self.gamma_max),
                self.grid_size,
                dtype=torch.float64,
            ).tolist(),
        ]
        scores = [damage(g) for g in grid]
        for _ in range(self.refine):
            best = max(range(len(grid)), key=scores.__getitem__)
            lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
            finer = torch.linspace(lo, hi, 9, dtype=torch.float64).tolist()[1:-1]
            grid += finer
            scores += [damage(g) for g in finer]
        return grid[max(range(len(grid)), key=scores.__getitem__)]
