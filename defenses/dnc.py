"""Divide-and-Conquer (Shejwalkar and Houmansadr 2021, NDSS: "Manipulating the Byzantine")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import power_of_two_scale, row_norms, zero_nonfinite


def dnc(
    updates: Tensor,
    f: int,
    generator: torch.Generator | None = None,
    niters: int = 5,
    c: float = 1.0,
    b: int = 10000,
) -> tuple[Tensor, Tensor]:
    """DnC aggregate of ``updates (n, d)`` and the rows it kept.

    Each of ``niters`` passes samples ``b`` coordinates (all when ``d <= b``), centers the
    submatrix, projects it on its top right singular vector, and keeps the ``n - c*f`` rows
    with the smallest squared projections (outlier scores); the good set is the intersection
    over passes and the output is its mean. Non-finite rows are never kept; the outlier scores
    are computed on the rows divided by a power of two near their median norm (exact), so
    rows of any magnitude keep their precision, and rows too large to square against the
    bulk count as non-finite. Without a finite row the output is NaN and nothing is kept.
    """
    n, d = updates.shape
    norms = row_norms(updates)
    finite = torch.isfinite(norms)
    scale = power_of_two_scale(norms, finite)
    finite &= norms / scale < math.sqrt(torch.finfo(updates.dtype).max / n)
    if not bool(finite.any()):
        return torch.full_like(updates[0], torch.nan), torch.zeros(0, dtype=torch.long)
    keep_count = max(1, n - int(c * f))
    good = finite.clone()
    rows = torch.nonzero(finite).flatten()
    x = zero_nonfinite(updates, finite)
    usable = x if bool(finite.all()) else x[rows]
    if scale != 1.0:
        usable = usable * (1.0 / scale)
    for _ in range(niters):
        if d > b:
            cols = torch.randperm(d, generator=generator)[:b].to(updates.device)
            sub = usable[:, cols]
        else:
            sub = usable
        centered = sub - sub.mean(dim=0)
        # The projections on the top right singular vector v of C are C v = s u, with (s^2, u)
        # the top eigenpair of the small Gram matrix C C^T: one product instead of an SVD.
        eigenvalues, eigenvectors = torch.linalg.eigh((centered @ centered.T).double())
        scores = torch.full((n,), torch.inf, dtype=torch.float64, device=updates.device)
        scores[rows] = eigenvalues[-1] * eigenvectors[:, -1] ** 2
        kept = torch.zeros_like(good)
        kept[torch.sort(scores, stable=True).indices[:keep_count]] = True
        good &= kept
    if not bool(good.any()):
        good = finite
    return x[good].mean(dim=0), torch.nonzero(good).flatten()


class DnC(Defense):
    """Divide-and-Conquer.

    Args:
        f: the assumed number of Byzantine clients.
        niters: random coordinate subsamples (passes).
        c: filtering fraction: each pass removes ``c * f`` rows.
        b: coordinates sampled per pass.
    """

    def __init__(self, f: int, niters: int = 5, c: float = 1.0, b: int = 10000) -> None:
        super().__init__()
        for key, value, low in (("f", f, 0), ("niters", niters, 1), ("b", b, 1)):
            if value < low:
                raise ConfigError(f"defense.{key}={value} is invalid: it must be >= {low}.")
        if c <= 0:
            raise ConfigError(f"defense.c={c} is invalid: it must be > 0.")
        self.f, self.niters, self.c, self.b = f, niters, c, b

    def check(self, n: int) -> None:
        if not n - int(self.c * self.f) >= 1:
            raise ConfigError(
                f"defense=dnc removes c*f = {int(self.c * self.f)} rows per pass but n={n}: "
                "lower defense.c or defense.f."
            )

    def __call__(self, updates: Tensor) -> Tensor:
        out, kept = dnc(updates, self.f, self.generator, self.niters, self.c, self.b)
        self.last_selected = kept.cpu()
        return out
