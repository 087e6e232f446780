"""Backdoor: BadNets-style trigger (Gu, Dolan-Gavitt and Garg 2017) with optional boosting of
the update for model replacement (Bagdasaryan, Veit, Hua, Estrin and Shmatikov 2020,
AISTATS)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


def stamp(x: Tensor, size: int, value: float) -> Tensor:
    """A copy of ``x`` with the trigger: for images ``(m, C, H, W)`` a ``size x size`` square
    in the bottom-right corner of every channel; for flat inputs ``(m, F)`` the last ``size``
    features. The trigger's entries are set to ``value``."""
    out = x.clone()
    if out.dim() == 4:
        out[:, :, -size:, -size:] = value
    elif out.dim() == 2:
        out[:, -size:] = value
    else:
        raise ConfigError(
            f"attack=backdoor supports inputs (m, F) or (m, C, H, W); got {tuple(x.shape)}."
        )
    return out


class Backdoor(Attack):
    """Byzantine clients stamp the trigger on a ``fraction`` of their samples, relabel those to
    ``target`` and train honestly on the result; with ``boost`` they scale their update up.

    Model replacement (Bagdasaryan et al. 2020, eq. 3) scales by ``n / eta`` for one attacker
    (``n`` clients a round, ``eta`` the server's step on their mean): then the attacker's
    update replaces the mean. When ``f`` attackers send together, each needs only
    ``n / (f eta)``; ``boost: auto`` computes that factor every round from the round's counts
    and ``server_lr`` (a larger factor overshoots the replacement). Constrain-and-scale
    (their section 4): with ``norm_bound`` set, an update is scaled at most up to that norm,
    the largest a norm-bounding defense lets through unclipped (give it the defense's bound:
    norm bounding's ``M``, a clipping pre-aggregator's ``c``).

    The attack success rate (``asr``) is the share of triggered test inputs whose true class is
    not ``target`` that the model assigns to ``target``.

    Args:
        target: the backdoor's target class.
        fraction: share of each Byzantine client's samples that are poisoned.
        boost: update scaling (1: none, plain data poisoning as in BadNets), or ``"auto"``:
            ``n / (f server_lr)``, the replacement factor for ``f`` attackers.
        norm_bound: the largest norm a scaled update may reach (``None``: unbounded).
        server_lr: the server's step (``fl.server_lr``), for ``boost: auto``.
        trigger_size: side of the square (images) or number of features (flat inputs).
        trigger_value: the trigger's value; ``None`` uses the largest input value (white).
    """

    targeted = True
    row_wise = True  # its rows scale each client's own poisoned update

    def __init__(
        self,
        target: int = 0,
        fraction: float = 0.5,
        boost: float | str = 1.0,
        trigger_size: int = 2,
        trigger_value: float | None = None,
        knowledge: str = "local",
        norm_bound: float | None = None,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(knowledge)
        if not 0 < fraction <= 1:
            raise ConfigError(f"attack.fraction={fraction} is invalid: it must be in (0, 1].")
        if boost != "auto" and not (isinstance(boost, int | float) and boost > 0):
            raise ConfigError(f"attack.boost={boost!r} is invalid: use a number > 0 or 'auto'.")
        if norm_bound is not None and norm_bound <= 0:
            raise ConfigError(f"attack.norm_bound={norm_bound} is invalid: use null or > 0.")
        if server_lr <= 0:
            raise ConfigError(f"attack.server_lr={server_lr} is invalid: it must be > 0.")
        if trigger_size < 1:
            raise ConfigError(f"attack.trigger_size={trigger_size} is invalid: it must be >= 1.")
        self.target, self.fraction, self.boost = target, fraction, boost
        self.norm_bound, self.server_lr = norm_bound, server_lr
        self.trigger_size, self.trigger_value = trigger_size, trigger_value

    def factor(self, num_clients: int, num_byzantine: int) -> float:
        """The boost for a round with ``num_clients`` rows, ``num_byzantine`` of them
        Byzantine: ``boost``, or ``n / (f server_lr)`` for ``"auto"``."""
        if self.boost == "auto":
            return num_clients / (max(num_byzantine, 1) * self.server_lr)
        return float(self.boost)

    def bind(self, num_classes: int, input_shape: tuple[int, ...], input_max: float) -> None:
        super().bind(num_classes, input_shape, input_max)
        if not 0 <= self.target < num_classes:
            raise ConfigError(
                f"attack.target={self.target} is invalid: the data set has classes "
                f"0..{num_classes - 1}."
            )
        spatial = input_shape[-2:] if len(input_shape) == 3 else input_shape[-1:]
        if any(self.trigger_size > side for side in spatial):
            raise ConfigError(
                f"attack.trigger_size={self.trigger_size} does not fit inputs of "
                f"shape {tuple(input_shape)}."
            )

    @property
    def value(self) -> float:
        return self.input_max if self.trigger_value is None else float(self.trigger_value)

    def poison_data(
        self, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        count = round(self.fraction * len(y))
        if count == 0:  # a backdoor that stamps nothing would silently be no attack
            raise ConfigError(
                f"attack.fraction={self.fraction} of a Byzantine client's {len(y)} samples rounds "
                "to 0 poisoned samples: raise attack.fraction or give the clients more data."
            )
        chosen = torch.randperm(len(y), generator=generator)[:count]
        x, y = x.clone(), y.clone()
        x[chosen] = stamp(x[chosen], self.trigger_size, self.value)
        y[chosen] = self.target
        return x, y

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        factor = self.factor(ctx.num_clients, ctx.num_byzantine)
        if self.norm_bound is None:
            return byzantine if factor == 1.0 else factor * byzantine
        norms = torch.linalg.vector_norm(byzantine, dim=1, keepdim=True)
        room = self.norm_bound / norms.clamp(min=torch.finfo(byzantine.dtype).tiny)
        return byzantine * torch.clamp(room, max=factor)

    def backdoor_test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        keep = y != self.target
        triggered = stamp(x[keep], self.trigger_size, self.value)
        return triggered, torch.full_like(y[keep], self.target)
