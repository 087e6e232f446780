"""Distance computations shared by attacks and defenses (attacks simulate Krum, defenses run
it), kept here so that neither package imports the other."""

from __future__ import annotations

import numpy as np
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


def median_norm_row(norms: Tensor | np.ndarray, usable: Tensor | np.ndarray) -> int:
    """Index of the row of median norm among the ``usable`` ones (the lower middle for an even
    count; equal norms to the lower index), from ``norms (n,)``: the reference row that
    distance computations center on. Needs at least one usable row."""
    norms, usable = (
        v.detach().cpu().numpy() if isinstance(v, Tensor) else v for v in (norms, usable)
    )
    order = np.argsort(np.where(usable, norms, np.inf), kind="stable")
    return int(order[(int(usable.sum()) - 1) // 2])


def pairwise_sq_distances(updates: Tensor, norms: Tensor | None = None) -> Tensor:
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

    ``norms`` (the rows' Euclidean norms, ``(n,)``) saves a pass over the matrix for a caller
    that needs them too. On the CPU the ``(n, n)`` work runs in numpy: some twenty torch
    operations on a 50 x 50 matrix took about 0.3 ms, as long as the product at d = 1e4.
    """
    if norms is None:
        norms = torch.linalg.vector_norm(updates, dim=1)
    norm_values = norms.detach().cpu().numpy()
    finite = np.isfinite(norm_values)
    x = updates
    if not finite.all():
        x = zero_nonfinite(updates, torch.from_numpy(finite).to(updates.device))
    if finite.any():
        x = x - x[median_norm_row(norm_values, finite)]
    gram = x @ x.T
    if gram.device.type == "cpu":
        return torch.from_numpy(_distances_from_gram(gram.detach().numpy(), finite))
    # The product is not exactly symmetric (blocked kernels round the two triangles
    # differently); symmetrize, so that equal distances (a mutual nearest pair) tie exactly
    # and rules break the tie by index instead of by rounding noise.
    gram = 0.5 * (gram + gram.T)
    sq = gram.diagonal()
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    dist = torch.nan_to_num(dist, nan=torch.inf).clamp_(min=0.0)
    good = torch.from_numpy(finite).to(updates.device) & torch.isfinite(sq)
    if not bool(good.all()):  # one fill instead of indexing: (n, n) ops cost microseconds each
        dist.masked_fill_(~(good[:, None] & good[None, :]), torch.inf)
    return dist.fill_diagonal_(0.0)


def _distances_from_gram(gram: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """:func:`pairwise_sq_distances`'s last steps in numpy, from the Gram matrix ``(n, n)`` of
    the centered rows and the rows' finiteness ``(n,)``; the torch steps there for other
    devices do the same (tested equal on CUDA)."""
    gram = 0.5 * (gram + gram.T)  # exactly symmetric: equal distances tie exactly
    sq = np.diagonal(gram)
    with np.errstate(over="ignore", invalid="ignore"):  # huge rows: inf, or inf - inf
        dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.nan_to_num(dist, copy=False, nan=np.inf)  # as torch's: +-inf to the largest finite
    np.maximum(dist, 0.0, out=dist)
    good = finite & np.isfinite(sq)
    if not good.all():
        dist[~(good[:, None] & good[None, :])] = np.inf
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(distances: Tensor, neighbors: int) -> Tensor:
    """``(n,)`` Krum scores from squared distances ``(n, n)``: for each row, the sum of its
    squared distances to its ``neighbors`` nearest *other* rows, added in ascending order (so
    the score does not depend on the rows' order). Rows at infinite distance (non-finite ones)
    score ``+inf``. In numpy on the CPU (small-array operations cost microseconds there)."""
    n = len(distances)
    k = max(0, min(neighbors, n - 1))
    if k == 0:
        return torch.zeros(n, dtype=distances.dtype, device=distances.device)
    if distances.device.type == "cpu":
        others = distances.detach().numpy().copy()
        np.fill_diagonal(others, np.inf)
        others.sort(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            return torch.from_numpy(others[:, :k].sum(axis=1))
    others = distances.clone()
    others.fill_diagonal_(torch.inf)
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)


def lowest_scores(scores: Tensor, m: int) -> Tensor:
    """Indices (sorted, on ``scores``' device) of the ``m`` lowest of ``scores (n,)``; equal
    scores go to the lower index, so the selection is deterministic (Multi-Krum's rows)."""
    order = np.argsort(scores.detach().cpu().numpy(), kind="stable")
    return torch.from_numpy(np.sort(order[:m])).to(scores.device)
