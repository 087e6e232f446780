"""Free riding (Lin, Du and Liu 2019): Byzantine clients report a zero update."""

import torch
from torch import Tensor

from attacks.base import Attack
from robustfl.context import RoundContext


class FreeRider(Attack):
    """Every Byzantine client sends a zero update (as if it did no training at all)."""

    poisons_updates = True  # the engine only calls poison_updates when this is True

    def __init__(self, knowledge: str = "local") -> None:
        super().__init__(knowledge)

    def poison_updates(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        # (f, d) in, (f, d) out. Randomness, if any, must come from ctx.generator.
        return torch.zeros_like(byzantine)
