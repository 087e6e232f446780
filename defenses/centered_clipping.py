"""Centered clipping (Karimireddy, He and Jaggi 2021, ICML: "Learning from History for
Byzantine Robust Optimization")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from defenses.base import Defense
from defenses.functional import clipped_mean
from robustfl.errors import ConfigError


def centered_clipping(
    updates: Tensor, center: Tensor, tau: float, iterations: int, workspace: Tensor | None = None
) -> Tensor:
    """``v <- v + mean_i clip(u_i - v, tau)`` repeated ``iterations`` times from ``v = center``.

    ``clip(z, tau) = z * min(1, tau / ||z||)``. A non-finite row contributes zero (its
    difference has no defined direction), so it cannot move the output. Each iteration forms
    the differences once (into ``workspace``, an optional ``(n, d)`` buffer reused across
    calls) and averages the clipped ones as one matrix-vector product.
    """
    v = center
    for _ in range(iterations):
        diff = torch.sub(updates, v, out=workspace) if workspace is not None else updates - v
        v = v + clipped_mean(diff, tau)
    return v


class CenteredClipping(Defense):
    """Centered clipping around the previous round's aggregate (the rule's state).

    Args:
        tau: clipping radius, in the units of the updates (model deltas here, so it scales with
            the client learning rate; see FACTS on carrying values over from papers).
        iterations: clipping passes ``L`` per round (the paper uses 1 in its experiments and
            analyses general ``L``; the bucketing paper used 3 with ``tau = 10``).
    """

    def __init__(self, tau: float = 1.0, iterations: int = 1) -> None:
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"defense.tau={tau} is invalid: it must be > 0.")
        if iterations < 1:
            raise ConfigError(f"defense.iterations={iterations} is invalid: it must be >= 1.")
        self.tau, self.iterations = tau, iterations
        self.center: Tensor | None = None
        self._workspace: Tensor | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        center = self.center if self.center is not None else torch.zeros_like(updates[0])
        if self._workspace is None or self._workspace.shape != updates.shape:
            self._workspace = torch.empty_like(updates)  # reused: no page faults per round
        out = centered_clipping(updates, center, self.tau, self.iterations, self._workspace)
        self.center = out.detach().clone()
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Copies (Defense.simulate) share nothing and need no workspace of their own yet.
        return {**self.__dict__, "_workspace": None}

    def reset(self) -> None:
        super().reset()
        self.center = None

    def state_dict(self) -> dict[str, Any]:
        return {"center": self.center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state.get("center")
