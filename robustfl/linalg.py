"""Distance computations shared by attacks and defenses (attacks simulate Krum, defenses run
it), kept here so that neither package imports the other."""

from __future__ import annotations

import torch
from torch import Tensor


def finite_rows(updates: Tensor) -> Tensor:
    """``(n,)`` bool: rows whose entries are all finite."""
    return torch.isfinite(updates).all(dim=1)


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """``(n, n)`` squared Euclidean distances between rows, by one matrix product.

    ``|a|^2 + |b|^2 - 2ab`` cancels catastrophically in float32 when rows share a large
    common part (rows ``10 + 1e-3 * noise``, as late in training: wrong Krum picks every time).
    So the rows are first centered on a reference row, the finite row of median norm: it is
    honest whenever fewer than half the rows are outliers, which keeps the centered values at
    the scale of the honest spread (centering on the mean would let one huge row spoil it),
    and the relative error drops to about 1e-7. The product runs in float64 when the input is
    float64. Rows with a non-finite entry, or so large that their squared norm overflows, are
    at distance ``+inf`` from every other row; the diagonal is 0.
    """
    n = len(updates)
    finite = finite_rows(updates)
    zero = torch.zeros((), dtype=updates.dtype, device=updates.device)
    x = torch.where(finite[:, None], updates, zero)
    if finite.any():
        norms = torch.linalg.vector_norm(x, dim=1).masked_fill(~finite, torch.inf)
        reference = torch.sort(norms, stable=True).indices[(int(finite.sum()) - 1) // 2]
        x = x - x[reference]
    sq = (x * x).sum(dim=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    dist = torch.nan_to_num(dist, nan=torch.inf).clamp_(min=0.0)
    bad = ~finite | ~torch.isfinite(sq)
    dist[bad, :] = torch.inf
    dist[:, bad] = torch.inf
    idx = torch.arange(n, device=updates.device)
    dist[idx, idx] = 0.0
    return dist


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
