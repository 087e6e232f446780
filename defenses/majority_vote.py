"""Majority vote on signs: the server of signSGD (Bernstein, Zhao, Azizzadenesheli and
Anandkumar 2019, "signSGD with Majority Vote is Communication Efficient and Fault Tolerant",
ICLR)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError


def majority_vote(updates: Tensor, step: float = 1.0) -> Tensor:
    """``step * sign(sum_i sign(u_i))`` per coordinate of ``updates (n, d)``: each row votes
    the sign of each coordinate, a tie gives 0, and a non-finite entry abstains."""
    votes = torch.where(torch.isfinite(updates), torch.sign(updates), 0.0).sum(dim=0)
    return torch.sign(votes) * step


class MajorityVote(Defense):
    """signSGD's majority vote (see :func:`majority_vote`); pair it with
    ``compression=sign`` so that clients send one bit per coordinate.

    Args:
        step: the per-coordinate step of the aggregate, signSGD's learning rate in update
            units (the server then applies ``fl.server_lr`` times it).
    """

    def __init__(self, step: float) -> None:
        super().__init__()
        if not step > 0 or not math.isfinite(step):
            raise ConfigError(
                f"defense.step={step} is invalid: signSGD's per-coordinate step must be a "
                "finite number > 0."
            )
        self.step = step

    def __call__(self, updates: Tensor) -> Tensor:
        return majority_vote(updates, self.step)
