"""Min-sum (AGR-agnostic) attack (Shejwalkar and Houmansadr 2021, NDSS)."""

from __future__ import annotations

from attacks.minmax import DistanceModel, MinMax, largest_root
from robustfl.linalg import pairwise_sq_distances


class MinSum(MinMax):
    """Like :class:`~attacks.minmax.MinMax`, with the constraint on sums of squared
    distances: ``sum_i ||m - h_i||^2 <= max_j sum_i ||h_j - h_i||^2``. Same parameters."""

    def bound(self, rows) -> float:
        return float(pairwise_sq_distances(rows.double()).sum(dim=1).max())

    def exact_gamma(self, model: DistanceModel, bound: float) -> float:
        count = len(model.a)
        total_b, total_a = model.b.sum(), model.a.sum()
        return float(
            largest_root(count * model.c, total_b.reshape(1), (total_a - bound).reshape(1))
        )

    def feasible(self, model: DistanceModel, bound: float, gamma: float) -> bool:
        return float(model.sq_distances(gamma).sum()) <= bound
