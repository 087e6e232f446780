"""The server's optimizer step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ServerOptimizer:
    """The server's SGD on the global model, with the aggregate as the negative gradient.

    ``torch.optim.SGD`` over the flat global parameters ``theta (d,)``, given the gradient
    ``-aggregate``: with ``g = -aggregate + weight_decay * theta``,
    ``buf <- momentum * buf + g`` (``buf = g`` on the first step) and ``theta <- theta - lr * buf``;
    without momentum ``theta <- theta + lr * (aggregate - weight_decay * theta)``. ``theta`` is
    updated in place.
    """

    def __init__(
        self, theta: Tensor, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        self.theta = theta
        self._sgd = torch.optim.SGD([theta], lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, aggregate: Tensor) -> None:
        """Apply the aggregate ``(d,)`` of this round's updates."""
        self.theta.grad = aggregate.neg()
        self._sgd.step()
        self.theta.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self._sgd.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sgd.load_state_dict(state)
