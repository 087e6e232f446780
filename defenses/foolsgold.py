"""FoolsGold (Fung, Yoon and Beschastnikh 2020, RAID: "The Limitations of Federated Learning
in Sybil Settings")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustfl.contracts import Defense
from robustfl.errors import ConfigError
from robustfl.linalg import finite_rows, zero_nonfinite


def foolsgold_weights(history: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold learning-rate weights ``(n,)`` from per-client update histories ``(n, d)``.

    Algorithm 1 of the paper, as the authors' code computes it (``model_aggregator.foolsgold``):
    pairwise cosine similarities of the histories less the identity (``cs - I``: a client's
    similarity to itself counts as 0, so a client unlike every other has ``v_i = 0``, not a
    negative maximum); each client's maximum similarity ``v_i``; pardoning
    (``cs_ij *= v_i / v_j`` when ``v_j > v_i``); ``a_i = 1 - max_j cs_ij`` clipped to [0, 1];
    rescaled so the largest is 1 (which becomes 0.99); then the logit
    ``kappa * (ln(a / (1 - a)) + 0.5)`` clipped to [0, 1]. Where the authors' code would give
    NaN (every ``a_i`` zero: all histories point the same way) the weights are 0.
    """
    n = len(history)
    if n == 1:
        return torch.ones(1, dtype=history.dtype, device=history.device)
    norms = torch.linalg.vector_norm(history, dim=1).clamp(min=torch.finfo(history.dtype).tiny)
    unit = history / norms[:, None]
    cs = unit @ unit.T
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    pardon = v[:, None] < v[None, :]  # cs_ij scaled by v_i / v_j when v_j > v_i
    cs = torch.where(pardon, cs * v[:, None] / v[None, :], cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if float(top) > 0:
        alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, 0.99), alpha)
    logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


class FoolsGold(Defense):
    """FoolsGold: down-weight clients whose update histories are too similar (sybils).

    State: the running sum of each client's updates, indexed by client id (from
    ``ctx.client_ids``). The output is the weighted average ``sum_i a_i u_i / sum_i a_i`` (zero
    when every weight is zero), which keeps the scale of the mean; the paper scales each
    client's learning rate by ``a_i`` instead. Non-finite rows get weight 0 and are not added
    to the history.

    Args:
        kappa: confidence parameter of the logit (the paper's ``kappa``, default 1).
    """

    uses_client_identity = True  # its history is kept per client id

    def __init__(self, kappa: float = 1.0) -> None:
        super().__init__()
        if kappa <= 0:
            raise ConfigError(f"defense.kappa={kappa} is invalid: it must be > 0.")
        self.kappa = kappa
        self.history: Tensor | None = None
        self._ids: Tensor | None = None
        self.last_weights: Tensor | None = None

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        self._ids = ctx.client_ids

    def __call__(self, updates: Tensor) -> Tensor:
        n, d = updates.shape
        ids = self._ids if self._ids is not None and len(self._ids) == n else torch.arange(n)
        ids = ids.to(updates.device)
        finite = finite_rows(updates)
        x = zero_nonfinite(updates, finite)
        needed = int(ids.max()) + 1
        if self.history is None or len(self.history) < needed:
            grown = torch.zeros(needed, d, dtype=updates.dtype, device=updates.device)
            if self.history is not None:
                grown[: len(self.history)] = self.history
            self.history = grown
        self.history[ids] += x
        weights = foolsgold_weights(self.history[ids], self.kappa) * finite
        self.last_weights = weights
        self.last_selected = torch.nonzero(weights > 0).flatten().cpu()
        total = weights.sum()
        if float(total) == 0.0:
            return torch.zeros_like(updates[0])
        return weights @ x / total

    def reset(self) -> None:
        super().reset()
        self.history = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state.get("history")
