"""Norm bounding (Sun, Kairouz, Suresh and McMahan 2019: "Can You Really Backdoor Federated
Learning?")."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import clip_scales, row_norms, zero_nonfinite


def norm_bound(
    updates: Tensor, M: float, sigma: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """``mean_i clip(u_i, M) + N(0, sigma^2 I)`` of ``updates (n, d)`` -> ``(d,)``, the clipped
    rows never materialized; non-finite rows count as zero."""
    norms = row_norms(updates)
    scales = clip_scales(norms, M).to(updates.dtype)
    out = scales @ zero_nonfinite(updates, torch.isfinite(norms)) / len(updates)
    if sigma:
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out = out + sigma * noise.to(out.device)
    return out


class NormBound(Defense):
    """Clip every update to norm ``M``, average, and optionally add Gaussian noise of standard
    deviation ``sigma`` (weak differential privacy), drawn from the round's generator.

    Args:
        M: the norm bound, in update units.
        sigma: the noise's standard deviation (0: none).
    """

    def __init__(self, M: float = 1.0, sigma: float = 0.0) -> None:
        super().__init__()
        if M <= 0:
            raise ConfigError(f"defense.M={M} is invalid: it must be > 0.")
        if sigma < 0:
            raise ConfigError(f"defense.sigma={sigma} is invalid: it must be >= 0.")
        self.M, self.sigma = M, sigma
        self.rotation_equivariant = sigma == 0  # noise is drawn per coordinate

    def __call__(self, updates: Tensor) -> Tensor:
        return norm_bound(updates, self.M, self.sigma, self.generator)
