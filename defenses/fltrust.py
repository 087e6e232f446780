"""FLTrust (Cao, Fang, Liu and Gong 2021, NDSS)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import finite_rows, zero_nonfinite


def fltrust(updates: Tensor, server_update: Tensor) -> tuple[Tensor, Tensor]:
    """FLTrust aggregate of ``updates (n, d)`` given the server's update ``g0 (d,)``.

    Trust score ``TS_i = ReLU(cos(u_i, g0))``; each update is rescaled to ``||g0||``; the output
    is ``sum_i TS_i * u_i * ||g0|| / ||u_i|| / sum_i TS_i`` (zero when every score is zero).
    Non-finite or zero rows get score 0. Returns the aggregate and the scores ``(n,)``.
    """
    finite = finite_rows(updates)
    x = zero_nonfinite(updates, finite)
    g0 = server_update.to(updates.dtype)
    g0_norm = torch.linalg.vector_norm(g0)
    norms = torch.linalg.vector_norm(x, dim=1)
    safe = norms.clamp(min=torch.finfo(updates.dtype).tiny)
    cosine = (x @ g0) / (safe * g0_norm.clamp(min=torch.finfo(updates.dtype).tiny))
    scores = torch.relu(cosine) * (finite & (norms > 0))
    total = scores.sum()
    if float(total) == 0.0:
        return torch.zeros_like(g0), scores
    weights = scores * g0_norm / safe
    return weights @ x / total, scores


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
