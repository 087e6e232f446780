"""Non-finite updates: does the aggregation survive NaN or inf rows?"""

from typing import Literal

import torch
from torch import Tensor

from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


class NonFinite(Attack):
    """Every Byzantine pseudo-gradient is all NaN (``value="nan"``), all +inf (``"inf"``) or all
    -inf (``"-inf"``), so the update the server receives is NaN, -inf or +inf. A robust rule
    must treat such rows as outliers."""

    def __init__(self, value: Literal["nan", "inf", "-inf"] = "nan", knowledge: str = "local"):
        super().__init__(knowledge)
        if value not in ("nan", "inf", "-inf"):
            raise ConfigError(f"attack.value={value!r} is invalid: use 'nan', 'inf' or '-inf'.")
        self.value = float(value)

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return torch.full_like(byzantine, self.value)
