"""Row geometry shared by attacks and defenses (attacks simulate Krum, defenses run it), kept
here so that neither package imports the other. All functions take an update matrix
``(n, d)`` and never loop over clients or coordinates.

Attackers choose the rows, so every function here stays exact on what they can send: rows
with a large common part and a tiny spread (late training), magnitudes near the ends of the
float range, identical rows, and non-finite entries.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from robustfl.kernels import centered_products

#: A recentered Gram matrix is kept when the centre's median squared distance to the rows is
#: at most this many times the smallest such median: float32 then keeps about 16 of its 24
#: bits in the distances between the rows near the centre.
CENTER_SLACK = 256.0


def row_norms(updates: Tensor) -> Tensor:
    """``(n,)`` float64 Euclidean norms of the rows of ``updates (n, d)``, accurate at any
    magnitude: rows whose norm over- or underflows in the input's precision (float32 squares
    leave its range above about ``1.8e19`` and lose bits below ``1e-19``) are recomputed in
    float64 after an exact power-of-two scaling. Non-finite exactly for a row with a NaN or an
    infinite entry."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    info = torch.finfo(updates.dtype)
    low, high = math.sqrt(info.tiny) * 2.0**12, math.sqrt(info.max) / 2.0**12
    if len(norms) == 0:
        return norms.double()
    smallest, largest = torch.aminmax(norms)  # NaN propagates and fails the test below
    if low < float(smallest) and float(largest) < high:
        return norms.double()
    suspect = ~((norms > low) & (norms < high))  # also NaN and inf
    norms = norms.double()
    if bool(suspect.any()):
        rows = updates[suspect].double()
        _, exponent = torch.frexp(rows.abs().amax(dim=1))
        factor = torch.exp2(exponent.double())
        scaled = torch.linalg.vector_norm(rows / factor[:, None], dim=1) * factor
        norms[suspect] = torch.where(torch.isfinite(rows).all(dim=1), scaled, torch.inf)
    return norms


def finite_rows(updates: Tensor) -> Tensor:
    """``(n,)`` bool: rows whose entries are all finite (however large)."""
    return torch.isfinite(row_norms(updates))


def zero_nonfinite(updates: Tensor, finite: Tensor) -> Tensor:
    """``updates`` with the rows where ``finite`` is False set to zero (no copy when all are
    finite), so that products with weights of 0 stay 0 instead of NaN."""
    if bool(finite.all()):
        return updates
    zero = torch.zeros((), dtype=updates.dtype, device=updates.device)
    return torch.where(finite[:, None], updates, zero)


def power_of_two_scale(norms: Tensor, usable: Tensor) -> float:
    """A power of two near the median of the ``usable`` rows' ``norms`` (1 when all of them
    lie between ``2^-40`` and ``2^40``, where squares are safe in float32, or the median is
    zero). Dividing by it is exact and brings the bulk of the rows to unit scale, whatever a
    minority sends."""
    values = norms.cpu().numpy()[usable.cpu().numpy()]  # a few numbers: numpy's calls are cheap
    if len(values) == 0 or (2.0**-40 < values.min() and values.max() < 2.0**40):
        return 1.0
    middle = float(np.sort(values)[(len(values) - 1) // 2])
    if middle == 0.0 or 2.0**-40 < middle < 2.0**40:
        return 1.0
    return 2.0 ** min(max(math.frexp(middle)[1], -120), 120)  # its inverse fits float32 too


def median_norm_row(norms: Tensor, usable: Tensor) -> int:
    """Index of the row of median norm among the ``usable`` ones (the lower middle for an even
    count; equal norms to the lower index). Needs at least one usable row."""
    keep = usable.cpu().numpy()
    keys = np.where(keep, norms.cpu().numpy(), np.inf)
    return int(np.argsort(keys, kind="stable")[(int(keep.sum()) - 1) // 2])


class Gram(NamedTuple):
    """Inner products of rows after centering and scaling (:func:`centered_gram`).

    ``matrix (n, n)`` float64: ``<(u_i - c) / scale, (u_j - c) / scale>``, exactly symmetric,
    zero in the rows and columns of unusable rows. ``usable (n,)``: rows with finite entries
    whose scaled squares fit the input's dtype. ``scale``: the power of two divided out.
    """

    matrix: Tensor
    usable: Tensor
    scale: float

    def sq_distances(self) -> Tensor:
        """``(n, n)`` float64 squared distances in the rows' own units; ``+inf`` to and from
        unusable rows, 0 on the diagonal."""
        # (n, n) work in numpy, whose calls cost a fraction of torch's on such small arrays
        gram, good = self.matrix.cpu().numpy(), self.usable.cpu().numpy()
        sq = np.diagonal(gram)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
        if self.scale != 1.0:
            dist *= self.scale**2
        if not good.all():
            dist[~(good[:, None] & good[None, :])] = np.inf
        np.fill_diagonal(dist, 0.0)
        return torch.from_numpy(dist).to(self.matrix.device)


def _gram_about(x: Tensor, center: Tensor, scale: float, finite: Tensor) -> Gram:
    gram = centered_products(x, center, scale).double().cpu().numpy()
    gram = 0.5 * (gram + gram.T)
    usable = finite.cpu().numpy() & np.isfinite(np.diagonal(gram))
    if not usable.all():
        gram[~(usable[:, None] & usable[None, :])] = 0.0
    return Gram(
        torch.from_numpy(gram).to(x.device), torch.from_numpy(usable).to(finite.device), scale
    )


def _median_distances(dist: Tensor, usable: Tensor) -> list[float]:
    """Each row's median (lower middle) squared distance to the other usable rows, from
    squared distances ``(n, n)`` with ``+inf`` to unusable rows and a zero diagonal (which
    sorts first); ``+inf`` for unusable rows."""
    count = int(usable.sum())
    if count < 2:
        return [0.0 if good else math.inf for good in usable.tolist()]
    k = 1 + (count - 2) // 2  # past the diagonal's zero
    return np.partition(dist.cpu().numpy(), k, axis=1)[:, k].tolist()


def centered_gram(updates: Tensor, norms: Tensor | None = None) -> Gram:
    """The Gram matrix of ``updates (n, d)`` computed so that float32 keeps its precision on
    the rows an attacker can send.

    ``|a|^2 + |b|^2 - 2ab`` cancels catastrophically when rows share a large common part
    (late in training), so the rows are centred on one of them first; and a minority must not
    choose that centre. The first centre is the row of median norm (usually honest and near
    the others). If its median squared distance to the rows exceeds :data:`CENTER_SLACK`
    times the smallest median squared distance of any row (it lies far from where most rows
    are, e.g. a Byzantine row of the honest norm), the matrix is recomputed about the row
    with that smallest median: near more than half the rows, so near honest ones, whoever
    sent it. Rows are divided by :func:`power_of_two_scale` of the norms, so rows near
    float32's limits (all of ``1e30`` or ``1e-30``) keep full precision; a row whose scaled
    squares still overflow is unusable (infinitely far from the bulk). ``norms (n,)`` from
    :func:`row_norms` saves a pass for a caller that has them.
    """
    return _centered(updates, norms)[0]


def _centered(updates: Tensor, norms: Tensor | None) -> tuple[Gram, Tensor]:
    """:func:`centered_gram` and its :meth:`Gram.sq_distances`, each computed once."""
    norms = row_norms(updates) if norms is None else norms
    finite = torch.isfinite(norms)
    n = len(updates)
    if not bool(finite.any()):
        zeros = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
        gram = Gram(zeros, finite, 1.0)
        return gram, gram.sq_distances()
    x = zero_nonfinite(updates, finite)
    scale = power_of_two_scale(norms, finite)
    center = median_norm_row(norms, finite)
    gram = _gram_about(x, x[center], scale, finite)
    dist = gram.sq_distances()
    for _ in range(2):  # one recentring suffices unless the first centre was absurdly far
        spread = _median_distances(dist, gram.usable)
        nearest = min(range(n), key=spread.__getitem__)
        if not spread[center] > CENTER_SLACK * spread[nearest]:
            break
        center = nearest
        gram = _gram_about(x, x[center], scale, finite)
        dist = gram.sq_distances()
    return gram, dist


def pairwise_sq_distances(updates: Tensor, norms: Tensor | None = None) -> Tensor:
    """``(n, n)`` float64 squared Euclidean distances between the rows of ``updates (n, d)``,
    from one matrix product (:func:`centered_gram`): exactly symmetric, so equal distances tie
    exactly and rules break ties by index, not by rounding. Rows with a non-finite entry, or
    too large to square against the bulk of the rows, are at distance ``+inf`` from every other
    row; the diagonal is 0. ``norms (n,)`` from :func:`row_norms` saves a pass."""
    return _centered(updates, norms)[1]


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


def clip_rows(updates: Tensor, threshold: Tensor | float, norms: Tensor | None = None) -> Tensor:
    """Every row of ``updates (n, d)`` scaled to norm at most ``threshold``; rows inside are
    unchanged, non-finite rows become zero. ``norms (n,)`` from :func:`row_norms` saves a
    pass."""
    norms = row_norms(updates) if norms is None else norms
    scale = clip_scales(norms, threshold).to(updates.dtype)
    return zero_nonfinite(updates, torch.isfinite(norms)) * scale[:, None]
