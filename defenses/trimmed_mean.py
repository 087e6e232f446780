"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett 2018, ICML)."""

from __future__ import annotations

from torch import Tensor

from robustfl.contracts import Defense, check_f, require_rows
from robustfl.kernels import sort_columns


def trimmed_mean(updates: Tensor, b: int) -> Tensor:
    """Per coordinate, drop the ``b`` largest and ``b`` smallest of the ``n`` values and average
    the other ``n - 2b``: ``(n, d) -> (d,)``. Up to ``b`` non-finite rows are trimmed away (NaN
    sorts as the largest value)."""
    n = len(updates)
    if not 0 <= 2 * b < n:
        raise ValueError(f"trimmed_mean needs 0 <= 2b < n; got b={b}, n={n}")
    return sort_columns(updates)[b : n - b].mean(dim=0)


class TrimmedMean(Defense):
    """Trimmed mean dropping ``b`` values per side and coordinate.

    Args:
        f: the assumed number of Byzantine clients.
        b: values trimmed per side; ``None`` (default) trims ``b = f``, as Yin et al. (2018)
            and ByzFL do. Flower trims ``int(beta * n)``, which for ``beta = f / n`` can be
            ``f - 1``; pass ``b`` explicitly to reproduce it.
    """

    def __init__(self, f: int, b: int | None = None) -> None:
        super().__init__()
        check_f(f)
        self.f = f
        self.b = f if b is None else b
        self.b_given = b is not None
        check_f(self.b, "defense.b")

    def check(self, n: int) -> None:
        lower = "defense.b" if self.b_given else "defense.f"
        require_rows("trimmed_mean", n, 2 * self.b + 1, f"2b < n with b={self.b}", self.f, lower)

    def __call__(self, updates: Tensor) -> Tensor:
        return trimmed_mean(updates, self.b)
