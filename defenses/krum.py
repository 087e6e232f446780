"""Krum (Blanchard, El Mhamdi, Guerraoui and Stainer 2017, NeurIPS)."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, pairwise_sq_distances


def default_neighbors(n: int, f: int) -> int:
    """``n - f - 2``, the neighbourhood size of Blanchard et al. (2017)."""
    return n - f - 2


def krum(updates: Tensor, f: int, neighbors: int | None = None) -> tuple[Tensor, int]:
    """The row of ``updates (n, d)`` with the lowest Krum score, and its index.

    Scores use squared distances (the paper's definition; one public reference code squares
    the squared distance again, which changes the pick). Ties go to the lowest index.
    """
    n = len(updates)
    k = default_neighbors(n, f) if neighbors is None else neighbors
    scores = krum_scores(pairwise_sq_distances(updates), k)
    index = int(torch.argmin(scores))
    return updates[index].clone(), index


def check_krum(n: int, f: int, neighbors: int | None, rule: str = "krum") -> None:
    if f < 0:
        raise ConfigError(f"defense.f={f} is invalid: it must be >= 0.")
    if not n > 2 * f + 2:
        raise ConfigError(
            f"defense={rule} needs n > 2f + 2 (Blanchard et al. 2017), but n={n} rows per round "
            f"and f={f}: raise fl.clients_per_round to at least {2 * f + 3} or lower defense.f."
        )
    if neighbors is not None and not 1 <= neighbors <= n - 1:
        raise ConfigError(
            f"defense.neighbors={neighbors} is invalid for n={n}: it must be in [1, {n - 1}]."
        )


class Krum(Defense):
    """Krum: output the update closest (in summed squared distance) to its neighbours.

    Args:
        f: the assumed number of Byzantine clients.
        neighbors: neighbours in the score; ``None`` (default) uses ``n - f - 2`` as in
            Blanchard et al. (2017) and Flower; ByzFL uses ``n - f - 1``.
    """

    rotation_equivariant = True  # distances only; outputs a row

    def __init__(self, f: int, neighbors: int | None = None) -> None:
        super().__init__()
        self.f = f
        self.neighbors = neighbors
        if f < 0:
            raise ConfigError(f"defense.f={f} is invalid: it must be >= 0.")

    def check(self, n: int) -> None:
        check_krum(n, self.f, self.neighbors)

    def __call__(self, updates: Tensor) -> Tensor:
        row, index = krum(updates, self.f, self.neighbors)
        self.last_selected = torch.tensor([index])
        return row
