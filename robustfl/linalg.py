"""Row geometry shared by attacks and defenses (attacks simulate Krum, defenses run it), kept
here so that neither package imports the other. All functions take an update matrix
``(n, d)`` and never loop over clients or coordinates."""

from __future__ import annotations

import torch
from torch import Tensor


def finite_rows(updates: Tensor) -> Tensor:
    """``(n,)`` bool: rows whose Euclidean norm is finite. A row with a NaN or an infinite
    entry has a non-finite norm; so does a row so large that its norm overflows, which every
    robust rule treats as an outlier anyway."""
    return torch.isfinite(torch.linalg.vector_norm(updates, dim=1))


def zero_nonfinite(updates: Tensor, finite: Tensor) -> Tensor:
    """``updates`` with the rows where ``finite`` is False set to zero (no copy when all are
    finite), so that products with weights of 0 stay 0 instead of NaN."""
    if bool(finite.all()):
        return updates
    zero = torch.zeros((), dtype=updates.dtype, device=updates.device)
    return torch.where(finite[:, None], updates, zero)


def median_norm_row(norms: Tensor, usable: Tensor) -> int:
    """Index of the row of median norm among the ``usable`` ones (the lower middle for an even
    count; equal norms to the lower index): the reference row distance computations center
    on. Needs at least one usable row."""
    keys = torch.where(usable, norms, torch.full_like(norms, torch.inf))
    order = torch.argsort(keys, stable=True)
    return int(order[(int(usable.sum()) - 1) // 2])


def pairwise_sq_distances(updates: Tensor, norms: Tensor | None = None) -> Tensor:
    """``(n, n)`` squared Euclidean distances between rows, by one matrix product.

    ``|a|^2 + |b|^2 - 2ab`` cancels catastrophically in float32 when rows share a large common
    part (late in training), so the rows are first centered on the finite row of median norm:
    honest whenever fewer than half the rows are outliers, which keeps the centered values at
    the scale of the honest spread. The Gram matrix is made exactly symmetric, so equal
    distances tie exactly and rules break ties by index, not by rounding. Rows with a
    non-finite entry, or whose norm overflows, are at distance ``+inf`` from every other row;
    the diagonal is 0. ``norms (n,)`` saves a pass for a caller that has them.
    """
    if norms is None:
        norms = torch.linalg.vector_norm(updates, dim=1)
    finite = torch.isfinite(norms)
    x = zero_nonfinite(updates, finite)
    if bool(finite.any()):
        x = x - x[median_norm_row(norms, finite)]
    gram = x @ x.T
    gram = 0.5 * (gram + gram.T)
    sq = gram.diagonal()
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = torch.nan_to_num(dist, nan=torch.inf).clamp_(min=0.0)
    good = finite & torch.isfinite(sq)
    dist.masked_fill_(~(good[:, None] & good[None, :]), torch.inf)
    return dist.fill_diagonal_(0.0)


def krum_scores(distances: Tensor, neighbors: int) -> Tensor:
    """``(n,)`` Krum scores from squared distances ``(n, n)``: each row's sum of squared
    distances to its ``neighbors`` nearest *other* rows, added in ascending order (so a score
    does not depend on the rows' order). Rows at infinite distance score ``+inf``."""
    n = len(distances)
    k = max(0, min(neighbors, n - 1))
    if k == 0:
        return torch.zeros(n, dtype=distances.dtype, device=distances.device)
    others = distances.clone().fill_diagonal_(torch.inf)
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)


def lowest_scores(scores: Tensor, m: int) -> Tensor:
    """Indices (sorted) of the ``m`` lowest of ``scores (n,)``; equal scores go to the lower
    index, so the selection is deterministic (Multi-Krum's rows)."""
    return torch.argsort(scores, stable=True)[:m].sort().values


def clip_scales(norms: Tensor, threshold: Tensor | float) -> Tensor:
    """``(n,)`` factors ``min(1, threshold / norm)`` of rows with norms ``(n,)``, and 0 for a
    non-finite norm (a row without a direction contributes nothing)."""
    threshold = torch.as_tensor(threshold, dtype=norms.dtype, device=norms.device)
    scale = torch.clamp(threshold / norms.clamp(min=torch.finfo(norms.dtype).tiny), max=1.0)
    return torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))


def clip_rows(updates: Tensor, threshold: Tensor | float) -> Tensor:
    """Every row of ``updates (n, d)`` scaled to norm at most ``threshold``; rows inside are
    unchanged, non-finite rows become zero."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = clip_scales(norms, threshold)
    return zero_nonfinite(updates, torch.isfinite(norms)) * scale[:, None]
