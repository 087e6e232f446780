"""Min-sum (AGR-agnostic) attack (Shejwalkar and Houmansadr 2021, NDSS)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from attacks.minmax import DistanceModel, MinMax, Perturbation, Search, largest_root
from robustfl.errors import ConfigError
from robustfl.linalg import pairwise_sq_distances

Bound = Literal["max", "min"]


class MinSum(MinMax):
    """Like :class:`~attacks.minmax.MinMax`, with the constraint on sums of squared distances:
    ``sum_i ||m - h_i||^2 <= B``, where ``B`` is the largest (``bound="max"``, default: the
    paper's formulation, ``max_j sum_i ||h_j - h_i||^2``) or the smallest (``bound="min"``: the
    authors' released code, ``min_score = torch.min(scores)``) sum of squared distances of an
    honest row to the others. ``"min"`` keeps the crafted row as central as the most central
    honest row, a smaller ``gamma``. Other parameters as for min-max.
    """

    def __init__(
        self,
        gamma: float | None = None,
        perturbation: Perturbation = "unit_vec",
        search: Search = "halving",
        gamma_init: float = 10.0,
        tol: float = 1e-5,
        bound: Bound = "max",
        unbiased: bool = True,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(gamma, perturbation, search, gamma_init, tol, unbiased, knowledge)
        if bound not in ("max", "min"):
            raise ConfigError(
                f"attack.bound={bound!r} is invalid: use 'max' (the paper) or 'min' (the "
                "authors' code)."
            )
        self.bound_kind = bound

    def bound(self, rows: Tensor) -> float:
        sums = pairwise_sq_distances(rows.double()).sum(dim=1)
        return float(sums.max() if self.bound_kind == "max" else sums.min())

    def exact_gamma(self, model: DistanceModel, bound: float) -> float:
        count = len(model.a)
        total_b, total_a = model.b.sum(), model.a.sum()
        return float(
            largest_root(count * model.c, total_b.reshape(1), (total_a - bound).reshape(1))
        )

    def feasible(self, model: DistanceModel, bound: float, gamma: float) -> bool:
        return float(model.sq_distances(gamma).sum()) <= bound
