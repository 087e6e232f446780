"""Norm clipping, a pre-aggregator: static threshold, or adaptive robust clipping (ARC,
Allouah, Guerraoui, Gupta, Jellouli, Rizk and Stephan 2024: "Boosting Robustness by Clipping
Gradients in Distributed Learning")."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import PreAggregator, check_f
from robustfl.errors import ConfigError
from robustfl.linalg import clip_rows, row_norms


def arc_threshold(norms: Tensor, f: int) -> Tensor | None:
    """ARC's threshold: with ``k = floor(2 (f / n) (n - f))``, the norm of the ``(k+1)``-th
    largest row (non-finite norms count as largest); the ``k`` largest rows are clipped to it.
    ``None`` when ``k = 0``."""
    n = len(norms)
    k = int(2 * f * (n - f) / n)
    if k == 0 or k >= n:
        return None
    ranked = torch.where(torch.isfinite(norms), norms, torch.full_like(norms, torch.inf))
    return torch.sort(ranked, descending=True).values[k]


def clipping(updates: Tensor, c: float | None = None, f: int = 0, adaptive: bool = False) -> Tensor:
    """Clip each row of ``updates (n, d)`` to norm ``c``, or with ``adaptive=True`` to ARC's
    data-dependent threshold. Non-finite rows become zero."""
    if not adaptive:
        return clip_rows(updates, c)
    norms = row_norms(updates)
    threshold = arc_threshold(norms, f)
    return clip_rows(updates, torch.inf if threshold is None else threshold, norms)


class Clipping(PreAggregator):
    """Static clipping to ``c``, or adaptive (ARC) clipping with ``adaptive=True``.

    Args:
        c: the static norm threshold, in update units (required unless adaptive).
        adaptive: use ARC (needs ``f``).
        f: the assumed number of Byzantine clients.
    """

    rotation_equivariant = True  # norms only

    def __init__(self, c: float | None = None, adaptive: bool = False, f: int = 0) -> None:
        if not adaptive and (c is None or c <= 0):
            raise ConfigError(
                f"pre clipping: c={c} is invalid: give a threshold c > 0 (pre.clipping.c=...), "
                "or use pre=[arc] for adaptive clipping."
            )
        check_f(f, "pre.clipping.f")
        self.c, self.adaptive, self.f = c, adaptive, f

    def __call__(self, updates: Tensor) -> Tensor:
        return clipping(updates, self.c, self.f, self.adaptive)
