"""Local model poisoning attacks of Fang, Cao, Jia and Gong (2020, USENIX Security): the
attack on Krum and the attack on trimmed mean / median, both directed against the sign of
the honest mean (their full-knowledge setting).

The paper crafts local models against the direction in which each parameter changes; here
the same construction runs on pseudo-gradients (the global model is the origin). Both attacks
commute with negating every row (the crafted values mirror with the honest ones, and the
ranges' factor ``b`` with them), so the result is the paper's attack in either space."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from attacks.common import repeat_row
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, pairwise_sq_distances

Variant = Literal["krum", "trimmed_mean"]


def krum_lambda_bound(honest: Tensor, n: int, f: int) -> float:
    """The paper's upper bound on lambda for ``n`` clients, ``f`` of them Byzantine:
    ``1 / ((n - 2f - 1) sqrt(d)) * min_i sum_{l in G_i} ||h_l - h_i||
    + 1 / sqrt(d) * max_i ||h_i||``, with ``G_i`` the ``n - f - 2`` honest rows nearest to
    ``h_i`` (the distance to the global model is the update's norm)."""
    h, d = honest.shape
    far = torch.linalg.vector_norm(honest.double(), dim=1).max() / math.sqrt(d)
    k = min(n - f - 2, h - 1)
    if n - 2 * f - 1 <= 0 or k < 1:
        return float(far)
    dist = pairwise_sq_distances(honest.double()).sqrt()
    dist.fill_diagonal_(math.inf)
    near = dist.topk(k, dim=1, largest=False).values.sum(dim=1).min()
    return float(near / ((n - 2 * f - 1) * math.sqrt(d)) + far)


def krum_picks_crafted(honest: Tensor, crafted: Tensor, count: int, f: int) -> bool:
    """Whether Krum (``n - f - 2`` neighbours) over ``honest`` plus ``count`` copies of
    ``crafted`` selects a copy. Honest rows come first, so ties go to them."""
    rows = torch.cat([honest, repeat_row(crafted, count)]).double()
    n = len(rows)
    scores = krum_scores(pairwise_sq_distances(rows), n - f - 2)
    return int(torch.argmin(scores)) >= len(honest)


def fang_krum(honest: Tensor, count: int, f: int, tol: float = 1e-5) -> tuple[Tensor, float]:
    """The crafted update ``-lambda * sign(mu)`` with the largest lambda, halved from the
    paper's upper bound until Krum selects it (down to ``tol``), and that lambda."""
    s = torch.sign(honest.mean(dim=0))
    lam = krum_lambda_bound(honest, len(honest) + count, f)
    while lam > tol:
        if krum_picks_crafted(honest, -lam * s, count, f):
            break
        lam /= 2
    return -lam * s, lam


def fang_trimmed_mean(honest: Tensor, count: int, b: float, generator: torch.Generator) -> Tensor:
    """``(count, d)`` rows pushing every coordinate against the honest mean's sign: where
    ``sign(mu_j) > 0`` values drawn uniformly below the honest minimum (in
    ``[min/b, min]`` if ``min > 0``, else ``[b min, min]``), otherwise above the honest maximum
    (``[max, b max]`` if ``max > 0``, else ``[max/b, max]``)."""
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    up = honest.mean(dim=0) > 0
    below_lo = torch.where(lo > 0, lo / b, b * lo)
    above_hi = torch.where(hi > 0, b * hi, hi / b)
    start = torch.where(up, below_lo, hi)
    end = torch.where(up, lo, above_hi)
    u = torch.rand(count, honest.shape[1], generator=generator).to(honest)
    return start + u * (end - start)


class Fang(Attack):
    """Fang et al.'s attacks.

    Args:
        variant: ``"krum"`` (the attack on Krum / Bulyan) or ``"trimmed_mean"`` (the attack on
            trimmed mean and median).
        b: the trimmed-mean attack's range factor (the paper's ``b = 2``).
        tol: the Krum attack's smallest lambda.
        knowledge: ``omniscient`` (full knowledge, default) or ``local`` (partial knowledge:
            the Byzantine clients' own honest updates stand in for the honest ones).
    """

    def __init__(
        self,
        variant: Variant = "trimmed_mean",
        b: float = 2.0,
        tol: float = 1e-5,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        if variant not in ("krum", "trimmed_mean"):
            raise ConfigError(
                f"attack.variant={variant!r} is invalid: use 'krum' or 'trimmed_mean'."
            )
        if b <= 1:
            raise ConfigError(f"attack.b={b} is invalid: it must be > 1.")
        self.variant, self.b, self.tol = variant, b, tol
        self.last_lambda: float | None = None

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        rows = self.observed(honest, byzantine)
        if self.variant == "krum":
            crafted, self.last_lambda = fang_krum(rows, len(byzantine), ctx.num_byzantine, self.tol)
            return repeat_row(crafted.to(byzantine.dtype), len(byzantine))
        return fang_trimmed_mean(rows, len(byzantine), self.b, ctx.generator)
