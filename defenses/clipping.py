"""Norm clipping, a pre-aggregator: static threshold, or adaptive robust clipping (ARC,
Allouah, Guerraoui, Gupta, Jellouli, Rizk and Stephan 2024: "Boosting Robustness by Clipping
Gradients in Distributed Learning")."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import PreAggregator
from defenses.functional import clip_rows, row_norms
from robustfl.errors import ConfigError


def arc_threshold(norms: Tensor, f: int) -> Tensor | None:
    """ARC's threshold: with ``k = floor(2 (f / n) (n - f))``, the norm of the ``(k+1)``-th
    largest row; the ``k`` largest rows are clipped to it. ``None`` when ``k = 0``."""
    n = len(norms)
    k = int(2 * f * (n - f) / n)
    if k == 0 or k >= n:
        return None
    return torch.sort(norms, descending=True).values[k]


def clipping(updates: Tensor, c: float | None = None, f: int = 0, adaptive: bool = False) -> Tensor:
    """Clip each row of ``updates (n, d)`` to norm ``c``, or with ``adaptive=True`` to ARC's
    data-dependent threshold. Non-finite rows become zero."""
    if adaptive:
        threshold = arc_threshold(row_norms(updates), f)
        if threshold is None:
            return clip_rows(updates, torch.inf)
        return clip_rows(updates, threshold)
    return clip_rows(updates, c)


class Clipping(PreAggregator):
    """Static clipping to ``c``, or adaptive (ARC) clipping with ``adaptive=True``.

    Args:
        c: the static norm threshold (required unless adaptive).
        adaptive: use ARC (needs ``f``, taken from the defense's ``f``).
        f: the assumed number of Byzantine clients.
    """

    rotation_equivariant = True  # norms only

    def __init__(self, c: float | None = None, adaptive: bool = False, f: int = 0) -> None:
        if not adaptive and (c is None or c <= 0):
            raise ConfigError(
                f"defense.pre clipping: c={c} is invalid: give a threshold c > 0, or "
                "adaptive: true for ARC."
            )
        if f < 0:
            raise ConfigError(f"defense.pre clipping: f={f} is invalid: it must be >= 0.")
        self.c, self.adaptive, self.f = c, adaptive, f

    def __call__(self, updates: Tensor) -> Tensor:
        return clipping(updates, self.c, self.f, self.adaptive)
