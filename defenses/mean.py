"""FedAvg aggregation (McMahan et al. 2017, AISTATS)."""

from __future__ import annotations

from torch import Tensor

from defenses.base import Defense
from robustfl.context import RoundContext


def mean(updates: Tensor, weights: Tensor | None = None) -> Tensor:
    """Average of the rows of ``updates (n, d)``; with ``weights (n,)``, the weighted average
    ``sum_i w_i u_i / sum_i w_i``. Not robust: one non-finite or huge row moves the output."""
    if weights is None:
        return updates.mean(dim=0)
    weights = weights.to(updates.dtype)
    return (weights @ updates) / weights.sum()


class Mean(Defense):
    """FedAvg. ``weighted=True`` weights each client by its number of local samples, as in
    McMahan et al. (2017); the default is the plain mean used throughout the Byzantine
    literature."""

    rotation_equivariant = True  # a weighted mean of the rows

    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        self.weighted = weighted
        self._weights: Tensor | None = None

    def prepare(self, ctx: RoundContext) -> None:
        self._weights = ctx.sample_counts if self.weighted else None

    def __call__(self, updates: Tensor) -> Tensor:
        weights = self._weights
        if weights is not None and len(weights) != len(updates):
            weights = None  # rows were mixed by a pre-aggregator: counts no longer apply
        return mean(updates, weights)
