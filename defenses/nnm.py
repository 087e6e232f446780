"""Nearest-neighbour mixing, a pre-aggregator (Allouah, Farhadkhani, Guerraoui, Gupta,
Pinot and Stephan 2023, AISTATS: "Fixing by Mixing")."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import PreAggregator, check_f
from robustfl.errors import ConfigError
from robustfl.linalg import pairwise_sq_distances, row_norms, zero_nonfinite


def nearest_neighbor_mixing(updates: Tensor, f: int) -> Tensor:
    """Replace each row of ``updates (n, d)`` by the mean of its ``n - f`` nearest rows
    (itself included, at distance 0): ``(n, d) -> (n, d)``, as one ``(n, n) @ (n, d)`` product.

    A row with a non-finite entry stays non-finite (the rule after NNM treats it as an
    outlier); a finite row never mixes in a non-finite one while at most ``f`` rows are
    non-finite (they are at infinite distance), otherwise its output is marked non-finite too.
    """
    n = len(updates)
    k = n - f
    norms = row_norms(updates)  # one pass, for the distances and finiteness
    dist = pairwise_sq_distances(updates, norms)
    nearest = dist.topk(k, dim=1, largest=False).indices  # (n, k)
    mixing = torch.zeros(n, n, dtype=updates.dtype, device=updates.device)
    mixing.scatter_(1, nearest, 1.0 / k)
    finite = torch.isfinite(norms)
    x = zero_nonfinite(updates, finite)
    out = mixing @ x
    tainted = (mixing[:, ~finite] > 0).any(dim=1) | ~finite
    out[tainted] = torch.nan
    return out


class NearestNeighborMixing(PreAggregator):
    """NNM with ``f`` the assumed number of Byzantine clients (``conf/pre/nnm.yaml``: the
    defense's ``f`` when it has one, else ``fl.num_byzantine``)."""

    rotation_equivariant = True  # distances only; means of rows

    def __init__(self, f: int) -> None:
        check_f(f, "pre.nnm.f")
        self.f = f

    def check(self, n: int) -> None:
        if not self.f < n:
            raise ConfigError(f"pre nnm needs f < n, but f={self.f} and n={n}: lower pre.nnm.f.")

    def __call__(self, updates: Tensor) -> Tensor:
        return nearest_neighbor_mixing(updates, self.f)
