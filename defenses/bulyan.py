"""Bulyan (El Mhamdi, Guerraoui and Rouault 2018, ICML)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from defenses.meamed import mean_around_median
from defenses.trimmed_mean import trimmed_mean
from robustfl.contracts import Defense, check_f, require_rows
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, lowest_scores, pairwise_sq_distances

Selection = Literal["repeated_krum", "multi_krum"]
SecondStep = Literal["closest_to_median", "trimmed_mean"]


def bulyan_select(distances: Tensor, f: int, theta: int, selection: Selection) -> Tensor:
    """Indices (sorted) of the ``theta`` rows Bulyan's first step keeps, from the squared
    distances ``(n, n)``. ``"repeated_krum"`` (the paper): take the Krum winner of the
    remaining rows (``r - f - 2`` neighbours of the ``r`` remaining), remove it, repeat.
    ``"multi_krum"``: the ``theta`` best scores of one Krum pass (Flower's newer strategy).

    A pass can tie by construction (at ``n = 4f + 3`` the last pass scores ``f - 1``
    neighbours: none for ``f = 1``). Tied rows are told apart by their summed squared
    distance to every remaining row (the most central wins), so the choice does not depend on
    the clients' order; only rows tied in both go to the lowest index."""
    n = len(distances)
    if selection == "multi_krum":
        return lowest_scores(krum_scores(distances, n - f - 2), theta)
    # Each row's distances sorted once: a pass sums, per remaining row, its first k entries
    # that are still remaining, the same values in the same order as a fresh sort would give.
    ordered, order = distances.clone().fill_diagonal_(torch.inf).sort(dim=1)
    remaining = torch.ones(n, dtype=torch.bool, device=distances.device)
    chosen = []
    for r in range(n, n - theta, -1):
        keep = remaining[order]
        keep &= keep.cumsum(dim=1) <= max(0, min(r - f - 2, r - 1))
        scores = torch.where(keep, ordered, 0.0).sum(dim=1).masked_fill_(~remaining, torch.inf)
        pick = int(torch.argmin(scores))
        tied = (scores == scores[pick]) & remaining
        if int(tied.sum()) > 1:  # e.g. every row of the last pass at n = 4f + 3 when f = 1
            spread = (
                torch.where(remaining, distances, 0.0).sum(dim=1).masked_fill_(~tied, torch.inf)
            )
            pick = int(torch.argmin(spread))
        chosen.append(pick)
        remaining[pick] = False
    return torch.tensor(sorted(chosen), device=distances.device)


def bulyan(
    updates: Tensor,
    f: int,
    selection: Selection = "repeated_krum",
    second_step: SecondStep = "closest_to_median",
) -> tuple[Tensor, Tensor]:
    """Bulyan of ``updates (n, d)`` -> ``(d,)``, and the rows its first step selected.

    Step 1 selects ``theta = n - 2f`` rows (:func:`bulyan_select`). Step 2, per coordinate,
    averages the ``beta = theta - 2f`` selected values closest to their median (the paper),
    or with ``second_step="trimmed_mean"`` trims ``f`` per side, keeping as many values.
    """
    theta = len(updates) - 2 * f
    chosen = bulyan_select(pairwise_sq_distances(updates), f, theta, selection)
    selected = updates[chosen]
    if second_step == "trimmed_mean":
        return trimmed_mean(selected, f), chosen
    return mean_around_median(selected, theta - 2 * f), chosen


class Bulyan(Defense):
    """Bulyan: Krum-based selection, then a coordinate-wise robust average.

    Args:
        f: the assumed number of Byzantine clients; needs ``n >= 4f + 3``.
        selection: ``"repeated_krum"`` (default, the paper) or ``"multi_krum"`` (Flower).
        second_step: ``"closest_to_median"`` (default, the paper) or ``"trimmed_mean"``.
    """

    def __init__(
        self,
        f: int,
        selection: Selection = "repeated_krum",
        second_step: SecondStep = "closest_to_median",
    ) -> None:
        super().__init__()
        check_f(f)
        if selection not in ("repeated_krum", "multi_krum"):
            raise ConfigError(
                f"defense.selection={selection!r} is invalid: use 'repeated_krum' or 'multi_krum'."
            )
        if second_step not in ("closest_to_median", "trimmed_mean"):
            raise ConfigError(
                f"defense.second_step={second_step!r} is invalid: use "
                "'closest_to_median' or 'trimmed_mean'."
            )
        self.f, self.selection, self.second_step = f, selection, second_step

    def check(self, n: int) -> None:
        require_rows("bulyan", n, 4 * self.f + 3, "n >= 4f + 3 (El Mhamdi et al. 2018)", self.f)

    def __call__(self, updates: Tensor) -> Tensor:
        out, chosen = bulyan(updates, self.f, self.selection, self.second_step)
        self.last_selected = chosen.cpu()
        return out
