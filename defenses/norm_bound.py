"""Norm bounding (Sun, Kairouz, Suresh and McMahan 2019: "Can You Really Backdoor Federated
Learning?")."""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import Defense
from defenses.functional import clipped_mean
from robustfl.errors import ConfigError


class NormBound(Defense):
    """Clip every update to norm ``M``, average, and optionally add ``N(0, sigma^2 I)`` noise
    (weak differential privacy). Non-finite rows are clipped to zero.

    Args:
        M: the norm bound, in update units.
        sigma: standard deviation of the added Gaussian noise (0: none).
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
        out = clipped_mean(updates, self.M)
        if self.sigma:
            noise = torch.randn(out.shape, generator=self.generator, dtype=out.dtype)
            out = out + self.sigma * noise.to(out.device)
        return out
