"""Distance computations shared by attacks and defenses (attacks simulate Krum, defenses run
it), kept here so that neither package imports the other."""

from __future__ import annotations

import torch
from torch import Tensor


def finite_rows(updates: Tensor) -> Tensor:
    """``(n,)`` bool: rows that are usable numbers, i.e. whose Euclidean norm is finite.

    A row with a NaN or an infinite entry has a non-finite norm; so does a row so huge that
    its norm overflows, which every robust rule treats as an outlier anyway. One reduction pass
    over the matrix, without a ``(n, d)`` temporary.
    """
    return torch.isfinite(torch.linalg.vector_norm(updates, dim=1))


def zero_nonfinite(updates: Tensor, finite: Tensor) -> Tensor:
    """``updates`` with the rows where ``finite`` is False set to zero (no copy when all are
    finite), so that products with weights of 0 stay 0 instead of NaN."""
    if bool(finite.all()):
        return updates
    return torch.where(
        finite[:, None], updates, torch.zeros((), dtype=updates.dtype, device=updates.device)
    )


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """``(n, n)`` squared Euclidean distances between rows, by one matrix product.

    ``|a|^2 + |b|^2 - 2ab`` cancels catastrophically in float32 when rows share a large
    common part (rows ``10 + 1e-3 * noise``, as late in training: wrong Krum picks every time).
    So the rows are first centered on a reference row, the finite row of median norm: it is
    honest whenever fewer than half the rows are outliers, which keeps the centered values at
    the scale of the honest spread (centering on the mean would let one huge row spoil it),
    and the relative error drops to about 1e-7. The squared norms are read off the Gram
    matrix's diagonal. The product runs in float64 when the input is float64. Rows with a
    non-finite entry, or so large that their norm overflows, are at distance ``+inf`` from
    every other row; the diagonal is 0.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    finite = torch.isfinite(norms)
    x = zero_nonfinite(updates, finite)
    if finite.any():
        order = torch.sort(norms.masked_fill(~finite, torch.inf), stable=True).indices
        x = x - x[order[(int(finite.sum()) - 1) // 2]]
    gram = x @ x.T
    # The product is not exactly symmetric (blocked kernels round the two triangles
    # differently); symmetrize, so that equal distances (a mutual nearest pair) tie exactly
    # and rules break the tie by index instead of by rounding noise.
    gram = 0.5 * (gram + gram.T)
    sq = gram.diagonal()
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = torch.nan_to_num(dist, nan=torch.inf).clamp_(min=0.0)
    good = finite & torch.isfinite(sq)
    if not bool(good.all()):  # one fill instead of indexing: (n, n) ops cost microseconds each
        dist.masked_fill_(~(good[:, None] & good[None, :]), torch.inf)
    return dist.fill_diagonal_(0.0)


def krum_scores(distances: Tensor, neighbors: int) -> Tensor:
    """``(n,)`` Krum scores from squared distances ``(n, n)``: for each row, the sum of its
    squared distances to its ``neighbors`` nearest *other* rows. Rows at infinite distance
    (non-finite ones) score ``+inf``."""
    n = len(distances)
    others = distances.clone()
    others.fill_diagonal_(torch.inf)
    k = max(0, min(neighbors, n - 1))
    if k == 0:
        return torch.zeros(n, dtype=distances.dtype, device=distances.device)
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)
