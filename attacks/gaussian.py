"""Gaussian noise (Blanchard, El Mhamdi, Guerraoui and Stainer 2017)."""

from typing import Literal

import torch
from torch import Tensor

from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


class Gaussian(Attack):
    """Byzantine rows drawn from ``N(center, std^2 I)``.

    Args:
        std: standard deviation, in pseudo-gradient units (those of the model deltas; a raw
            gradient times the client learning rate). Blanchard et al. used 200 on raw
            gradients; the default 1.0 suits a learning rate near 0.05.
        center: ``"zero"`` (the paper) or ``"mean"``: around the mean of the observed rows.
    """

    def __init__(
        self, std: float = 1.0, center: Literal["zero", "mean"] = "zero", knowledge: str = "local"
    ) -> None:
        super().__init__(knowledge)
        if std <= 0:
            raise ConfigError(f"attack.std={std} is invalid: it must be > 0.")
        if center not in ("zero", "mean"):
            raise ConfigError(f"attack.center={center!r} is invalid: use 'zero' or 'mean'.")
        self.std, self.center = std, center
        self.row_wise = center == "zero"  # around the mean it reads the other rows

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        noise = torch.randn(byzantine.shape, generator=ctx.generator).to(byzantine)
        rows = self.std * noise
        if self.center == "mean":
            rows += self.observed(honest, byzantine).mean(dim=0)
        return rows
