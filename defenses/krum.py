"""Krum (Blanchard, El Mhamdi, Guerraoui and Stainer 2017, NeurIPS)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense, check_f, require_rows
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, pairwise_sq_distances


def krum(updates: Tensor, f: int, neighbors: int | None = None) -> tuple[Tensor, int]:
    """The row of ``updates (n, d)`` with the lowest score, and its index: ``score(i)`` is the
    sum of squared distances from row ``i`` to its ``n - f - 2`` nearest other rows (or
    ``neighbors``). Squared distances, as the paper defines them (one public reference code
    squares them again, which changes the pick); ties go to the lowest index."""
    k = len(updates) - f - 2 if neighbors is None else neighbors
    index = int(torch.argmin(krum_scores(pairwise_sq_distances(updates), k)))
    return updates[index].clone(), index


def check_krum(rule: str, n: int, f: int, neighbors: int | None) -> None:
    """Krum's and Multi-Krum's preconditions: ``n > 2f + 2`` and ``1 <= neighbors < n``."""
    require_rows(rule, n, 2 * f + 3, "n > 2f + 2 (Blanchard et al. 2017)", f)
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
        check_f(f)
        self.f, self.neighbors = f, neighbors

    def check(self, n: int) -> None:
        check_krum("krum", n, self.f, self.neighbors)

    def __call__(self, updates: Tensor) -> Tensor:
        row, index = krum(updates, self.f, self.neighbors)
        self.last_selected = torch.tensor([index])
        return row
