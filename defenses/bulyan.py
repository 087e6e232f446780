"""Bulyan (El Mhamdi, Guerraoui and Rouault 2018, ICML)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from defenses.base import Defense
from defenses.functional import (
    PARALLEL_MIN,
    in_column_blocks,
    mean_of_rows,
    pairwise_sq_distances,
    sort_columns,
)
from robustfl.errors import ConfigError
from robustfl.linalg import krum_scores, lowest_scores

Selection = Literal["repeated_krum", "multi_krum"]
SecondStep = Literal["closest_to_median", "trimmed_mean"]


def bulyan_select(distances: Tensor, f: int, theta: int, selection: Selection) -> Tensor:
    """Indices (sorted) of the ``theta`` rows Bulyan's first step keeps.

    ``"repeated_krum"`` (the paper): pick the Krum winner of the remaining set, remove it,
    repeat; each pass scores over ``r - f - 2`` neighbours of the ``r`` remaining rows and reuses
    the one distance matrix. ``"multi_krum"``: the ``theta`` best scores of a single Krum pass
    (Flower's newer strategy; a different set in most random trials).
    """
    n = len(distances)
    if selection == "multi_krum":
        return lowest_scores(krum_scores(distances, n - f - 2), theta)
    # theta = n - 2f passes over the (n, n) matrix, never over coordinates; in numpy, where
    # small-array operations cost microseconds instead of torch's dispatch overhead. Each row
    # is sorted once; a pass takes, per remaining row, the first k entries of its sorted row
    # that are still remaining: the same values, in the same order, as sorting the remaining
    # submatrix anew (1.6 -> 1.2 ms at n = 50, 40 -> 23 ms at n = 200).
    dist = distances.detach().double().cpu().numpy().copy()
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")
    ordered = np.take_along_axis(dist, order, axis=1)
    remaining = np.ones(n, dtype=bool)
    chosen = []
    for _ in range(theta):
        candidates = np.flatnonzero(remaining)
        r = len(candidates)
        k = max(0, min(r - f - 2, r - 1))
        if k == 0:
            scores = np.zeros(r)
        else:
            # Each candidate's own (infinite) entry is among its remaining ones; it sorts
            # after every finite distance, and k <= r - 1 leaves it out unless the row is
            # at infinite distance anyway.
            keep = remaining[order[candidates]]
            keep &= np.cumsum(keep, axis=1) <= k
            scores = ordered[candidates][keep].reshape(r, k).sum(axis=1)
        pick = int(candidates[np.argmin(scores)])  # first minimum: ties to the lowest index
        chosen.append(pick)
        remaining[pick] = False
    return torch.tensor(sorted(chosen), device=distances.device)


def closest_to_median_mean(selected: Tensor, beta: int) -> Tensor:
    """Per coordinate, the mean of the ``beta`` values closest to the median: ``(t, d) -> (d,)``.

    In sorted order those values form a window ``[s, s + beta)``; per coordinate the window
    whose larger distance to the median is smallest wins, ties to the lower start. A window
    whose cost is NaN (it reaches a NaN, which sorts last, or meets an infinite median) ranks
    after every other. Nothing loops over coordinates: the loop runs over the ``t - beta + 1``
    window starts, on whole rows.

    On the CPU in numpy, over column blocks that stay in the cache (on parallel threads from
    ``PARALLEL_MIN`` entries), instead of torch on the whole matrix, where every operation streams a
    ``(t - beta + 1, d)`` array through memory: Bulyan's second step at n = 50 (30 selected
    rows, beta = 10) took 4.6 -> 2.6 to 3.9 ms at d = 1e4 and 32 to 41 -> 25 to 27 ms at
    d = 1e5, and at n = 200, d = 1e5, 113 to 144 -> 94 to 97 ms (sort included).
    """
    ordered = sort_columns(selected).to(selected.device)
    if ordered.device.type != "cpu":
        return _window_mean_torch(ordered, beta)
    array = ordered.numpy()
    out = np.empty(array.shape[1], dtype=array.dtype)

    def work(lo: int, hi: int) -> None:
        out[lo:hi] = _window_mean_numpy(array[:, lo:hi], beta)

    workers = max(1, torch.get_num_threads()) if array.size >= PARALLEL_MIN else 1
    in_column_blocks(work, array.shape[1], _WINDOW_BLOCK, workers)
    return torch.from_numpy(out)


# Columns per block of the CPU window search: 16384 beat 2048 to 8192 and 65536 at n = 50
# (d = 1e4 and 1e5) and n = 200 (d = 1e5); its cost array is 1.4 MB at t = 30, beta = 10.
_WINDOW_BLOCK = 1 << 14


def _window_mean_numpy(ordered: np.ndarray, beta: int) -> np.ndarray:
    """:func:`closest_to_median_mean` of sorted columns ``ordered (t, d)``, in numpy."""
    t, d = ordered.shape
    starts = t - beta + 1
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, ranks last
        med = ordered[t // 2] if t % 2 else 0.5 * (ordered[t // 2 - 1] + ordered[t // 2])
        cost = np.subtract(med, ordered[:starts])
        np.maximum(cost, np.subtract(ordered[beta - 1 : beta - 1 + starts], med), out=cost)
    # +inf -> the largest float, then NaN -> +inf: NaN windows rank after infinite ones.
    np.minimum(cost, np.finfo(cost.dtype).max, out=cost)
    np.copyto(cost, np.inf, where=np.isnan(cost))
    best = np.zeros(d, dtype=np.intp)
    lowest = cost[0].copy()
    better = np.empty(d, dtype=bool)
    for start in range(1, starts):  # a running minimum; strict < keeps the lowest start
        np.less(cost[start], lowest, out=better)
        np.minimum(cost[start], lowest, out=lowest)
        np.copyto(best, start, where=better)
    window = np.take_along_axis(ordered, best + np.arange(beta)[:, None], axis=0)
    with np.errstate(invalid="ignore", over="ignore"):  # as torch: inf + -inf is NaN
        return window.mean(axis=0)


def _window_mean_torch(ordered: Tensor, beta: int) -> Tensor:
    """:func:`closest_to_median_mean` of sorted columns ``ordered (t, d)``, in torch (for
    other devices than the CPU; tested equal to the numpy version)."""
    t = len(ordered)
    med = ordered[t // 2] if t % 2 else 0.5 * (ordered[t // 2 - 1] + ordered[t // 2])
    starts = t - beta + 1
    cost = torch.maximum(med - ordered[:starts], ordered[beta - 1 : beta - 1 + starts] - med)
    cost = torch.nan_to_num(cost, nan=torch.inf)  # as in numpy: NaN ranks after +inf
    # argmin over the few window starts, as a running minimum: torch.argmin along dim 0 took
    # 13 ms at (5, 1e5), the loop a fraction of a millisecond. Strict < keeps the lowest start.
    best = torch.zeros(cost.shape[1], dtype=torch.long, device=cost.device)
    lowest = cost[0].clone()
    for start in range(1, starts):
        better = cost[start] < lowest
        lowest = torch.where(better, cost[start], lowest)
        best.masked_fill_(better, start)
    # Gather the window (beta, d) and average it; a cumulative-sum difference would be cheaper
    # but cancels in float32 next to large outlying values.
    rows = best[None, :] + torch.arange(beta, device=ordered.device)[:, None]
    return ordered.gather(0, rows).mean(dim=0)


def bulyan(
    updates: Tensor,
    f: int,
    selection: Selection = "repeated_krum",
    second_step: SecondStep = "closest_to_median",
) -> tuple[Tensor, Tensor]:
    """Bulyan of ``updates (n, d)`` -> ``(d,)``, and the rows its first step selected.

    Step 1 selects ``theta = n - 2f`` rows (see :func:`bulyan_select`). Step 2, per
    coordinate, averages the ``beta = theta - 2f`` selected values closest to their median
    (the paper), or with ``second_step="trimmed_mean"`` trims ``f`` per side, which keeps the
    same count ``beta`` of central values.
    """
    n = len(updates)
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = bulyan_select(pairwise_sq_distances(updates), f, theta, selection)
    selected = updates[chosen]
    if second_step == "trimmed_mean":
        out = mean_of_rows(sort_columns(selected), f, theta - f).to(updates.device)
    else:
        out = closest_to_median_mean(selected, beta)
    return out, chosen


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
        if f < 0:
            raise ConfigError(f"defense.f={f} is invalid: it must be >= 0.")
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
        if not n >= 4 * self.f + 3:
            raise ConfigError(
                f"defense=bulyan needs n >= 4f + 3 (El Mhamdi et al. 2018), but n={n} rows per "
                f"round and f={self.f}: raise fl.clients_per_round to at least {4 * self.f + 3} "
                "or lower defense.f."
            )

    def __call__(self, updates: Tensor) -> Tensor:
        out, chosen = bulyan(updates, self.f, self.selection, self.second_step)
        self.last_selected = chosen.cpu()
        return out
