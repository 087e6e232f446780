"""Coordinate-wise median (Yin, Chen, Ramchandran and Bartlett 2018, ICML)."""

from __future__ import annotations

from torch import Tensor

from robustfl.contracts import Defense
from robustfl.kernels import column_median, median_of_sorted, sort_columns


def median(updates: Tensor) -> Tensor:
    """Per coordinate, the middle of the ``n`` sorted values (the mean of the two middle ones for
    even ``n``): ``(n, d) -> (d,)``. NaN sorts as the largest value, so up to ``ceil(n/2) - 1``
    non-finite rows leave the output finite and inside the range of the other rows."""
    return median_of_sorted(sort_columns(updates))


class Median(Defense):
    """Coordinate-wise median; needs no ``f`` and works for any ``n >= 1``."""

    def __call__(self, updates: Tensor) -> Tensor:
        return column_median(updates)  # median(updates), by selection instead of a full sort
