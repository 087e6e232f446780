"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett 2018, ICML)."""

from __future__ import annotations

from torch import Tensor

from defenses.base import Defense
from defenses.functional import mean_of_rows, sort_columns
from robustfl.errors import ConfigError


def trimmed_mean(updates: Tensor, b: int) -> Tensor:
    """Per coordinate, drop the ``b`` largest and ``b`` smallest of the ``n`` values and average
    the remaining ``n - 2b``: ``(n, d) -> (d,)``. Needs ``2b < n``.

    Up to ``b`` non-finite rows are trimmed away (NaN sorts as the largest value).
    """
    n = len(updates)
    if not 0 <= 2 * b < n:
        raise ValueError(f"trimmed_mean needs 0 <= 2b < n; got b={b}, n={n}")
    return mean_of_rows(sort_columns(updates), b, n - b).to(updates.device)


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
        if f < 0:
            raise ConfigError(f"defense.f={f} is invalid: it must be >= 0.")
        self.f = f
        self.b = f if b is None else b
        if self.b < 0:
            raise ConfigError(f"defense.b={self.b} is invalid: it must be >= 0.")

    def check(self, n: int) -> None:
        if not 2 * self.b < n:
            raise ConfigError(
                f"defense=trimmed_mean needs 2b < n, but b={self.b} and n={n} rows per round: "
                f"lower defense.b (or fl.num_byzantine) below {n / 2} or raise fl.clients_per_round."
            )

    def __call__(self, updates: Tensor) -> Tensor:
        return trimmed_mean(updates, self.b)
