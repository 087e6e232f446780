"""Label flipping (Allen-Zhu et al. 2021; as in Blades): ``y -> C - 1 - y``."""

import torch
from torch import Tensor

from robustfl.contracts import Attack


class LabelFlip(Attack):
    """Data poisoning: every label ``y`` of a Byzantine client becomes ``C - 1 - y``; the
    clients then train and report honestly on the flipped data."""

    def poison_data(
        self, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return x, self.num_classes - 1 - y
