"""Centered clipping (Karimireddy, He and Jaggi 2021, ICML: "Learning from History for
Byzantine Robust Optimization")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import clip_scales, row_norms, zero_nonfinite


def centered_clipping(updates: Tensor, center: Tensor, tau: float, iterations: int) -> Tensor:
    """``v <- v + mean_i clip(u_i - v, tau)``, ``iterations`` times from ``v = center``, with
    ``clip(z, tau) = z min(1, tau / ||z||)``: ``updates (n, d)``, ``center (d,)`` -> ``(d,)``.
    A non-finite row contributes zero (its difference has no direction)."""
    v = center
    for _ in range(iterations):
        step = torch.zeros_like(v)
        for block in updates.split(rows_per_block(updates)):
            diff = block - v
            norms = row_norms(diff)
            scales = clip_scales(norms, tau).to(diff.dtype)
            step.addmv_(zero_nonfinite(diff, torch.isfinite(norms)).T, scales)
        v = v + step / len(updates)
    return v


def rows_per_block(updates: Tensor) -> int:
    """On the CPU, rows of about 4 MiB at a time, so that each block's differences stay in
    the cache from their subtraction to their sum; elsewhere all rows at once."""
    if updates.device.type != "cpu":
        return len(updates)
    return max(1, (4 << 20) // max(1, updates[0].numel() * updates.element_size()))


class CenteredClipping(Defense):
    """Centered clipping around the previous round's aggregate (the rule's state; zero at
    first).

    Args:
        tau: the clipping radius, in the units of the updates. Updates are model deltas, so a
            radius from a paper carries over only at the same model, loss scale and update
            definition (with ``fl.lr=1`` and the step in ``fl.server_lr`` the updates are the
            clients' gradients or momentum vectors, the papers' units).
        iterations: clipping passes ``L`` per round (the paper uses 1 in its experiments; the
            bucketing paper 3 with ``tau = 10``).
    """

    def __init__(self, tau: float = 1.0, iterations: int = 1) -> None:
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"defense.tau={tau} is invalid: it must be > 0.")
        if iterations < 1:
            raise ConfigError(f"defense.iterations={iterations} is invalid: it must be >= 1.")
        self.tau, self.iterations = tau, iterations
        self.center: Tensor | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        center = self.center if self.center is not None else torch.zeros_like(updates[0])
        out = centered_clipping(updates, center, self.tau, self.iterations)
        self.center = out.clone()  # the state must not alias what the caller receives
        return out

    def reset(self) -> None:
        super().reset()
        self.center = None

    def state_dict(self) -> dict[str, Any]:
        return {"center": self.center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state.get("center")
