"""Mean around the median, MeaMed (Xie, Koyejo and Gupta 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense, check_f, require_rows
from robustfl.kernels import median_of_sorted, sort_columns


def mean_around_median(updates: Tensor, keep: int) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values closest to the median: ``(n, d) -> (d,)``.

    Values are chosen by their distance to the median: with ``r`` the ``keep``-th smallest
    distance, every value closer than ``r`` is kept, and the places left go to the values at
    distance exactly ``r``. Repeated values (the ``f`` identical rows ALIE, IPM and mimic send)
    are kept or left out by distance like any other. When the values at distance ``r`` lie on
    both sides of the median, they share the places left equally (each enters with weight
    ``places / tied``): the average over every choice of the ``keep`` nearest values, so the
    rule does not depend on the rows' order and ``rule(-U) = -rule(U)``.

    The mean is taken of the deviations from the median and added to it, which keeps float32's
    precision on values with a large common part. NaN is infinitely far from the median (it
    sorts last); a coordinate whose ``keep`` nearest values reach a NaN or an infinity, or
    whose median is infinite, is non-finite.
    """
    n = len(updates)
    ordered = sort_columns(updates)
    med = median_of_sorted(ordered)
    deviation = ordered.sub_(med)  # sorted along each column
    torch.nan_to_num_(deviation, nan=torch.inf, posinf=torch.inf, neginf=-torch.inf)
    # The keep nearest values are a window of the sorted column, so the keep-th smallest
    # distance r is the narrowest window's far end.
    radius = torch.maximum(deviation[keep - 1], -deviation[0])
    for start in range(1, n - keep + 1):
        far_end = torch.maximum(deviation[start + keep - 1], -deviation[start])
        radius = torch.minimum(radius, far_end)
    # How many values lie below, at, and above -r and r, from sums of signs: exact (x + r is 0
    # only for x = -r, and float sums of small integers are exact) and much faster on the CPU
    # than counting booleans along the client axis.
    side = torch.add(deviation, radius).sign_()
    below_sign = side.sum(dim=0)  # #(> -r) - #(< -r)
    at_low = n - side.mul_(side).sum(dim=0)  # #(= -r)
    torch.sub(deviation, radius, out=side).sign_()
    above_sign = side.sum(dim=0)  # #(> r) - #(< r)
    at_high = n - side.mul_(side).sum(dim=0)  # #(= r)
    below = (n + at_low - below_sign) / 2  # #(<= -r)
    above = (n + at_high + above_sign) / 2  # #(>= r)
    # Clamped to [-r, r], values beyond r add exactly +-r, which the counts take back out.
    closer = deviation.clamp_(-radius, radius).sum(dim=0) + radius * (below - above)
    places = keep - (n - below - above)
    tied = radius * (at_high - at_low) * places / (at_low + at_high)
    return torch.where(radius == 0, med, med + (closer + tied) / keep)


def meamed(updates: Tensor, f: int) -> Tensor:
    """MeaMed: per coordinate, the mean of the ``n - f`` values closest to the median."""
    return mean_around_median(updates, len(updates) - f)


class MeaMed(Defense):
    """MeaMed with ``f`` the assumed number of Byzantine clients (needs ``2f < n``)."""

    def __init__(self, f: int) -> None:
        super().__init__()
        check_f(f)
        self.f = f

    def check(self, n: int) -> None:
        # Called once before training with the rows per round: fail early, name the numbers.
        require_rows("meamed", n, 2 * self.f + 1, "2f < n", self.f)

    def __call__(self, updates: Tensor) -> Tensor:
        return meamed(updates, self.f)
