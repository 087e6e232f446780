"""Bucketing, a pre-aggregator (Karimireddy, He and Jaggi 2022, ICLR: "Byzantine-Robust
Learning on Heterogeneous Datasets via Bucketing")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustfl.contracts import PreAggregator
from robustfl.errors import ConfigError
from robustfl.linalg import finite_rows, zero_nonfinite


def bucketing(updates: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle the rows of ``updates (n, d)``, cut them into ``ceil(n / s)`` buckets of ``s``
    consecutive rows (the last may be smaller) and return the bucket means ``(ceil(n/s), d)``.

    A bucket holding a non-finite row is non-finite (the rule after it treats it as an outlier).
    """
    n = len(updates)
    m = math.ceil(n / s)
    order = torch.randperm(n, generator=generator).to(updates.device)
    bucket_of = torch.empty(n, dtype=torch.long, device=updates.device)
    bucket_of[order] = torch.arange(n, device=updates.device) // s
    sizes = torch.bincount(bucket_of, minlength=m).to(updates.dtype)
    mixing = torch.zeros(m, n, dtype=updates.dtype, device=updates.device)
    mixing[bucket_of, torch.arange(n, device=updates.device)] = 1.0 / sizes[bucket_of]
    finite = finite_rows(updates)
    x = zero_nonfinite(updates, finite)
    out = mixing @ x
    out[(mixing[:, ~finite] > 0).any(dim=1)] = torch.nan
    return out


class Bucketing(PreAggregator):
    """Bucketing with bucket size ``s`` (the paper uses ``s = 2``); randomness from the
    round's defense generator."""

    rotation_equivariant = True  # means of rows (of a permutation)

    def __init__(self, s: int = 2) -> None:
        if s < 1:
            raise ConfigError(f"pre.bucketing.s={s} is invalid: it must be >= 1.")
        self.s = s

    def output_rows(self, n: int) -> int:
        return math.ceil(n / self.s)

    def __call__(self, updates: Tensor) -> Tensor:
        return bucketing(updates, self.s, self.generator)
