"""FedAvg aggregation (McMahan, Moore, Ramage, Hampson and Arcas 2017, AISTATS)."""

from __future__ import annotations

from torch import Tensor

from robustfl.contracts import Defense, RoundContext


def mean(updates: Tensor, weights: Tensor | None = None) -> Tensor:
    """The average of the rows of ``updates (n, d)``, or with ``weights (n,)`` the weighted
    average ``sum_i w_i u_i / sum_i w_i``. Not robust: one non-finite or huge row moves it."""
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
        self.weighted = self.uses_client_identity = weighted
        self.plain_mean = not weighted
        self._weights: Tensor | None = None

    def prepare(self, ctx: RoundContext) -> None:
        super().prepare(ctx)
        self._weights = ctx.sample_counts if self.weighted else None

    def __call__(self, updates: Tensor) -> Tensor:
        return mean(updates, self._weights)
