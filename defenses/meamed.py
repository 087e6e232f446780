"""Mean around the median, MeaMed (Xie, Koyejo and Gupta 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense, check_f, require_rows
from robustfl.kernels import median_of_sorted, sort_columns


def mean_around_median(updates: Tensor, keep: int) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values closest to the median: ``(n, d) -> (d,)``.

    In sorted order those values form a window ``[s, s + keep)``; the window whose farther end
    is nearest to the median wins, ties to the lower start. NaN sorts last, and a window whose
    width is NaN (it reaches a NaN, or meets an infinite median) ranks after every other.
    """
    ordered = sort_columns(updates)
    med = median_of_sorted(ordered)
    starts = len(ordered) - keep + 1
    width = torch.maximum(med - ordered[:starts], ordered[keep - 1 : keep - 1 + starts] - med)
    width = torch.nan_to_num(width, nan=torch.inf)  # +inf becomes the largest float first
    best = torch.zeros(width.shape[1], dtype=torch.long, device=width.device)
    narrowest = width[0].clone()
    for start in range(1, starts):  # a running minimum over the few starts, whole rows at once
        better = width[start] < narrowest  # strict: ties keep the lower start
        narrowest = torch.where(better, width[start], narrowest)
        best.masked_fill_(better, start)
    rows = best + torch.arange(keep, device=best.device)[:, None]
    return ordered.gather(0, rows).mean(dim=0)


def meamed(updates: Tensor, f: int) -> Tensor:
    """MeaMed: per coordinate, the mean of the ``n - f`` values closest to the median."""
    return mean_around_median(updates, len(updates) - f)


class MeaMed(Defense):
    """MeaMed with ``f`` the assumed number of Byzantine clients (needs ``2f < n``)."""

    def __init__(self, f: int) -> None:
        super().__init__()
        check_f(f)
        self.f = f

    def check(self, n: int) -> None:
        # Called once before training with the rows per round: fail early, name the numbers.
        require_rows("meamed", n, 2 * self.f + 1, "2f < n", self.f)

    def __call__(self, updates: Tensor) -> Tensor:
        return meamed(updates, self.f)
