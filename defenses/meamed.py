"""Mean around the median, MeaMed (Xie, Koyejo and Gupta 2018)."""

import torch
from torch import Tensor

from defenses.base import Defense
from defenses.functional import median_of_sorted, sort_columns
from robustfl.errors import ConfigError


def meamed(updates: Tensor, f: int) -> Tensor:
    """Per coordinate, the mean of the ``n - f`` values closest to the median: ``(n, d) -> (d,)``.

    In sorted order those values form a window; the one whose farther end is nearest to the
    median wins (ties to the lower window). Non-finite entries sort to the ends.
    """
    n = len(updates)
    keep = n - f
    ordered = sort_columns(updates).to(updates.device)
    med = median_of_sorted(ordered)
    starts = f + 1  # windows [s, s + keep) for s = 0..f
    cost = torch.maximum(med - ordered[:starts], ordered[keep - 1 : keep - 1 + starts] - med)
    cost = torch.nan_to_num(cost, nan=torch.inf)  # a window reaching a NaN never wins
    best = torch.argmin(cost, dim=0, keepdim=True)  # (1, d): each coordinate's window start
    rows = best + torch.arange(keep, device=ordered.device)[:, None]
    return ordered.gather(0, rows).mean(dim=0)


class MeaMed(Defense):
    """MeaMed with ``f`` the assumed number of Byzantine clients (needs ``2f < n``)."""

    def __init__(self, f: int) -> None:
        super().__init__()
        if f < 0:
            raise ConfigError(f"defense.f={f} is invalid: it must be >= 0.")
        self.f = f

    def check(self, n: int) -> None:
        # Called once before training with the rows per round: fail early, name the numbers.
        if not 2 * self.f < n:
            raise ConfigError(f"defense=meamed needs 2f < n, but f={self.f} and n={n}.")

    def __call__(self, updates: Tensor) -> Tensor:
        return meamed(updates, self.f)
