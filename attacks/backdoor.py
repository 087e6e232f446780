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
    ``target`` and train honestly on the result; with ``boost > 1`` they scale their update by
    ``boost`` (model replacement: Bagdasaryan et al. use ``n / server_lr``).

    The attack success rate (``asr``) is the share of triggered test inputs whose true class is
    not ``target`` that the model assigns to ``target``.

    Args:
        target: the backdoor's target class.
        fraction: share of each Byzantine client's samples that are poisoned.
        boost: update scaling (1: none).
        trigger_size: side of the square (images) or number of features (flat inputs).
        trigger_value: the trigger's value; ``None`` uses the largest input value (white).
    """

    def __init__(
        self,
        target: int = 0,
        fraction: float = 0.5,
        boost: float = 1.0,
        trigger_size: int = 2,
        trigger_value: float | None = None,
        knowledge: str = "local",
    ) -> None:
        super().__init__(knowledge)
        if not 0 < fraction <= 1:
            raise ConfigError(f"attack.fraction={fraction} is invalid: it must be in (0, 1].")
        if boost <= 0:
            raise ConfigError(f"attack.boost={boost} is invalid: it must be > 0.")
        if trigger_size < 1:
            raise ConfigError(f"attack.trigger_size={trigger_size} is invalid: it must be >= 1.")
        self.target, self.fraction, self.boost = target, fraction, boost
        self.trigger_size, self.trigger_value = trigger_size, trigger_value

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
        return byzantine if self.boost == 1.0 else self.boost * byzantine

    def backdoor_test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        keep = y != self.target
        triggered = stamp(x[keep], self.trigger_size, self.value)
        return triggered, torch.full_like(y[keep], self.target)
