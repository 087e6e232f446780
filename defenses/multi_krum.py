"""Multi-Krum (Blanchard et al. 2017; El Mhamdi, Guerraoui and Rouault 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.krum import check_distance_power, check_krum
from robustfl.contracts import Defense, check_f
from robustfl.errors import ConfigError
from robustfl.linalg import (
    krum_scores,
    lowest_scores,
    pairwise_sq_distances,
    row_norms,
    zero_nonfinite,
)


def multi_krum(
    updates: Tensor,
    f: int,
    m: int | None = None,
    neighbors: int | None = None,
    distance_power: int = 2,
) -> tuple[Tensor, Tensor]:
    """The mean of the ``m`` rows (``n - f`` by default) with the lowest Krum scores, and those
    rows' indices (sorted): ``(n, d) -> (d,), (m,)``.

    A non-finite row scores ``+inf``, so it is chosen only when ``m`` exceeds the number of
    finite rows (possible for ``m > n - f``); the mean then is non-finite, as a mean of those
    rows is, rather than a mean with the row silently taken as zero."""
    n = len(updates)
    m = n - f if m is None else m
    k = n - f - 2 if neighbors is None else neighbors
    norms = row_norms(updates)  # one pass, for the distances and the mean
    distances = pairwise_sq_distances(updates, norms)
    if distance_power != 2:  # Karimireddy et al.'s code: squared distances squared again
        distances = distances ** (distance_power / 2)
    chosen = lowest_scores(krum_scores(distances, k), m)
    finite = torch.isfinite(norms)
    if not bool(finite[chosen].all()):
        return updates[chosen].mean(dim=0), chosen
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[chosen] = 1.0 / m
    # the chosen rows' mean as one product (unchosen non-finite rows zeroed)
    return weights @ zero_nonfinite(updates, finite), chosen


class MultiKrum(Defense):
    """Multi-Krum.

    Args:
        f: the assumed number of Byzantine clients.
        m: rows averaged; ``None`` (default) uses ``n - f``.
        neighbors: neighbours in the Krum score; ``None`` uses ``n - f - 2`` (Blanchard et al.).
        distance_power: 2 (default, squared distances) or 4 (Karimireddy et al.'s code).
    """

    rotation_equivariant = True  # distances only; a mean of rows

    def __init__(
        self, f: int, m: int | None = None, neighbors: int | None = None, distance_power: int = 2
    ) -> None:
        super().__init__()
        check_f(f)
        check_distance_power(distance_power)
        self.f, self.m, self.neighbors, self.distance_power = f, m, neighbors, distance_power

    def check(self, n: int) -> None:
        check_krum("multi_krum", n, self.f, self.neighbors)
        if self.m is not None and not 1 <= self.m <= n:
            raise ConfigError(f"defense.m={self.m} is invalid for n={n}: it must be in [1, {n}].")

    def __call__(self, updates: Tensor) -> Tensor:
        out, chosen = multi_krum(updates, self.f, self.m, self.neighbors, self.distance_power)
        self.last_selected = chosen.cpu()
        return out
