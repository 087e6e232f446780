"""Coordinate-wise mean and standard deviation on the CPU."""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows per block: about this many bytes, a block that stays in the cache.
BLOCK_BYTES = 4 << 20


def mean_and_std(rows: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """``rows.mean(0)`` and ``rows.std(0)`` of ``rows (m, d)``, ``m >= 2``, by the corrected
    two-pass algorithm (Chan, Golub and LeVeque 1983): the squared deviations from the mean,
    less (sum of deviations)^2 / m, which cancels the mean's own rounding. The rows go in
    blocks of about 4 MiB that stay in the cache (``torch.std(dim=0)`` runs a Welford pass
    along the strided client axis, several times slower)."""
    mu = rows.mean(dim=0)
    count = len(rows)
    squares, shifts = torch.zeros_like(mu), torch.zeros_like(mu)
    step = max(1, BLOCK_BYTES // max(1, mu.numel() * mu.element_size()))
    block = torch.empty(min(count, step), *mu.shape, dtype=mu.dtype)
    for start in range(0, count, step):
        part = rows[start : start + step]
        deviations = torch.sub(part, mu, out=block[: len(part)])
        shifts += deviations.sum(dim=0)
        squares += deviations.mul_(deviations).sum(dim=0)
    variance = squares.sub_(shifts.mul_(shifts).div_(count)).clamp_(min=0.0)
    return mu, variance.div_(count - 1 if unbiased else count).sqrt_()
