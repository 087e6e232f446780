"""Coordinate-wise median (Yin, Chen, Ramchandran and Bartlett 2018, ICML)."""

from __future__ import annotations

from torch import Tensor

from defenses.base import Defense
from defenses.functional import column_median


def median(updates: Tensor) -> Tensor:
    """Coordinate-wise median of ``updates (n, d)`` -> ``(d,)``.

    For even ``n`` the median is the mean of the two middle values (not torch's lower median).
    Non-finite entries sort to the ends (NaN as the largest), so up to ``ceil(n/2) - 1``
    non-finite rows leave the output finite and inside the range of the other rows.
    """
    return column_median(updates)


class Median(Defense):
    """Coordinate-wise median; needs no knowledge of f and works for any n >= 1."""

    def __call__(self, updates: Tensor) -> Tensor:
        return median(updates)
