"""Free riding (Lin, Du and Liu 2019): Byzantine clients report a zero update."""

import torch
from torch import Tensor

from robustfl.contracts import Attack, RoundContext


class FreeRider(Attack):
    """Every Byzantine client sends a zero update (as if it did no training at all)."""

    row_wise = True

    def __init__(self, knowledge: str = "local") -> None:
        super().__init__(knowledge)

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        # (f, d) pseudo-gradients in and out; randomness, if any, from ctx.generator.
        return torch.zeros_like(byzantine)
