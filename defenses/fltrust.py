"""FLTrust (Cao, Fang, Liu and Gong 2021, NDSS)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import row_norms, zero_nonfinite


def fltrust(updates: Tensor, server_update: Tensor) -> tuple[Tensor, Tensor]:
    """FLTrust aggregate of ``updates (n, d)`` given the server's update ``g0 (d,)``.

    Trust score ``TS_i = ReLU(cos(u_i, g0))``; each update is rescaled to ``||g0||``; the output
    is ``sum_i TS_i * u_i * ||g0|| / ||u_i|| / sum_i TS_i`` (zero when every score is zero).
    Non-finite or zero rows get score 0, and every score is 0 when ``g0`` is zero or
    non-finite. Norms and cosines are computed scale-safely (rows of ``1e30`` or ``1e-30``
    keep their directions). Returns the aggregate and the float64 scores ``(n,)``.
    """
    norms = row_norms(updates)
    finite = torch.isfinite(norms)
    x = zero_nonfinite(updates, finite)
    g0 = server_update.to(device=updates.device, dtype=updates.dtype)
    g0_norm = float(row_norms(g0[None])[0])
    if not 0.0 < g0_norm < math.inf:
        return torch.zeros_like(g0), torch.zeros_like(norms)
    direction = (g0.double() / g0_norm).to(updates.dtype)
    projections = (x @ direction).double()
    if not bool(torch.isfinite(projections).all()):  # a finite row's sum overflowed the dtype
        redo = ~torch.isfinite(projections)
        projections[redo] = x[redo].double() @ direction.double()
    valid = finite & (norms > 0)
    scores = torch.where(valid, torch.relu(projections / norms), 0.0)
    total = float(scores.sum())
    if total == 0.0:
        return torch.zeros_like(g0), scores
    weights = torch.where(valid, scores * (g0_norm / total) / norms, 0.0)
    return weights.to(updates.dtype) @ x, scores


class FLTrust(Defense):
    """FLTrust: the server's own update on a small clean root set bootstraps trust.

    The engine trains the server on ``root_size`` samples drawn (seeded) from the clean
    training pool, as the paper samples its root set from the clients' clean data, with the
    clients' local-training settings; ``ctx.server_update()`` returns that update.
    """

    def __init__(self, root_size: int = 100) -> None:
        super().__init__()
        if root_size < 1:
            raise ConfigError(f"defense.root_size={root_size} is invalid: it must be >= 1.")
        self.root_size = root_size
        self._server_update: Tensor | None = None
        self.last_scores: Tensor | None = None

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        self._server_update = ctx.server_update()

    def __call__(self, updates: Tensor) -> Tensor:
        if self._server_update is None:
            raise RuntimeError("FLTrust.prepare(ctx) must run before aggregation.")
        out, scores = fltrust(updates, self._server_update)
        self.last_scores = scores
        self.last_selected = torch.nonzero(scores > 0).flatten().cpu()
        return out
