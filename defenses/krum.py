"""Krum (Blanchard, El Mhamdi, Guerraoui and Stainer 2017, NeurIPS)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense, check_f, require_rows
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, pairwise_sq_distances


def krum(
    updates: Tensor, f: int, neighbors: int | None = None, distance_power: int = 2
) -> tuple[Tensor, int]:
    """The row of ``updates (n, d)`` with the lowest score, and its index: ``score(i)`` is the
    sum of the ``distance_power``-th powers of the distances from row ``i`` to its
    ``n - f - 2`` nearest other rows (or ``neighbors``). Squared distances (2) as the paper
    defines them; 4 is Karimireddy et al.'s code, which squares its squared distances again
    (``codes/aggregator/krum.py``), which can change the pick. Ties go to the lowest index."""
    k = len(updates) - f - 2 if neighbors is None else neighbors
    index = int(torch.argmin(krum_scores(distance_powers(updates, distance_power), k)))
    return updates[index].clone(), index


def distance_powers(updates: Tensor, power: int) -> Tensor:
    """``(n, n)`` pairwise distances of the rows raised to ``power`` (2: squared)."""
    squared = pairwise_sq_distances(updates)
    return squared if power == 2 else squared ** (power / 2)


def check_distance_power(power: int) -> None:
    if power not in (2, 4):
        raise ConfigError(
            f"defense.distance_power={power} is invalid: use 2 (Blanchard et al., squared "
            "distances) or 4 (Karimireddy et al.'s code)."
        )


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
        distance_power: 2 (default, the paper: squared distances) or 4 (Karimireddy et al.'s
            code, ``defense=krum_karimireddy``).
    """

    rotation_equivariant = True  # distances only; outputs a row

    def __init__(self, f: int, neighbors: int | None = None, distance_power: int = 2) -> None:
        super().__init__()
        check_f(f)
        check_distance_power(distance_power)
        self.f, self.neighbors, self.distance_power = f, neighbors, distance_power

    def check(self, n: int) -> None:
        check_krum("krum", n, self.f, self.neighbors)

    def __call__(self, updates: Tensor) -> Tensor:
        row, index = krum(updates, self.f, self.neighbors, self.distance_power)
        self.last_selected = torch.tensor([index])
        return row
