"""The attack contract.

An attack may poison a Byzantine client's local data once before training
(:meth:`Attack.poison_data`), replace the Byzantine rows of every round (:meth:`Attack.poison_gradients`),
or both. The engine calls whichever of the two a subclass overrides; nothing else needs to be
declared.

**The space attacks work in.** A client's *update* is its model delta
``theta_local - theta_global``. Attacks never see updates: they see and return
*pseudo-gradients* ``g = theta_global - theta_local = -update``. For one local SGD step at
learning rate ``lr`` that is ``lr`` times the minibatch gradient; with worker momentum, ``lr``
times the momentum buffer. This is the space in which the papers define their attacks
(gradients or momentum vectors), so a formula such as ALIE's ``mu - z * sigma`` is written
here exactly as published. Only the sign matters: every attack in the catalog is homogeneous
in its input's scale. The engine negates the rows on the way in and out (see
``docs/conventions.md``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from robustfl.context import RoundContext
from robustfl.errors import ConfigError

Knowledge = Literal["omniscient", "local"]


class Attack:
    """Honest behaviour; subclasses override what they poison.

    Args:
        knowledge: ``"omniscient"``: the attacker sees the honest pseudo-gradients of the round
            (the threat model of ALIE, IPM and min-max); ``"local"``: only those its own
            clients computed honestly. :meth:`observed` returns the rows an attack may use.
    """

    def __init__(self, knowledge: Knowledge = "omniscient") -> None:
        if knowledge not in ("omniscient", "local"):
            raise ConfigError(
                f"attack.knowledge={knowledge!r} is invalid: use 'omniscient' or 'local'."
            )
        self.knowledge = knowledge

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "poison_updates" in vars(cls):  # the name before the pseudo-gradient contract
            raise TypeError(
                f"{cls.__qualname__} defines poison_updates: the method is poison_gradients, and "
                "its rows are pseudo-gradients (minus the model deltas); see attacks/base.py."
            )

    def bind(self, num_classes: int, input_shape: tuple[int, ...], input_max: float) -> None:
        """Learn the data set's facts before any poisoning (the engine calls this once):
        the number of classes, the input shape without the batch dimension, and the largest
        input value (a trigger's "white")."""
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.input_max = float(input_max)

    def check(self, num_clients: int, num_byzantine: int) -> None:
        """Raise :class:`~robustfl.errors.ConfigError` when the attack cannot run with
        ``num_clients`` rows per round of which ``num_byzantine`` are Byzantine."""

    def poison_data(
        self, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Data poisoning of one Byzantine client's local data ``x: (m, ...)``, ``y: (m,)``."""
        return x, y

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        """Model poisoning: the honest pseudo-gradients ``(h, d)`` and those the Byzantine
        clients computed honestly ``(f, d)`` -> the ``(f, d)`` pseudo-gradients they send."""
        return byzantine

    def backdoor_test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        """For backdoor attacks: the triggered test inputs and their target labels, built from
        the clean test set ``x, y``; the engine reports the accuracy on it as ``asr``."""
        return None

    def observed(self, honest: Tensor, byzantine: Tensor) -> Tensor:
        """The rows this attacker can see, by its knowledge level: ``(rows, d)``."""
        return honest if self.knowledge == "omniscient" and len(honest) else byzantine

    def state_dict(self) -> dict:
        """State to checkpoint (stateless attacks have none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def overrides(attack: Attack, method: str) -> bool:
    """Whether ``attack``'s class overrides the :class:`Attack` method named ``method``."""
    return getattr(type(attack), method) is not getattr(Attack, method)


# The deviations of this many bytes of rows (at least one row) are squared together: a block
# that stays in the cache, and a bounded temporary for models of millions of parameters.
_STD_BLOCK_BYTES = 4 << 20


def mean_and_std(rows: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and standard deviation of ``rows (m, d)``, each ``(d,)``.

    ``unbiased=True`` is the sample std (divides by ``m - 1``; torch's default and what the
    ALIE authors' PyTorch code computes), ``False`` the population std. With one row the std
    is zero.
    """
    mu = rows.mean(dim=0)
    count = len(rows)
    if count < 2:
        return mu, torch.zeros_like(mu)
    if rows.device.type != "cpu":  # one kernel there: 0.04 against 0.44 ms blocked, on an H200
        return mu, rows.std(dim=0, unbiased=unbiased)
    # On the CPU, the corrected two-pass algorithm (Chan, Golub and LeVeque 1983): deviations
    # from the float32 mean, less (sum of deviations)^2 / count, which cancels the mean's own
    # rounding (it matters where the spread is a few ulps of the values). The rows go in
    # blocks of about 4 MiB that stay in the cache: at (800, 9610) float32 about 5 to 8 ms
    # against 34 ms for rows.std(dim=0), a Welford pass along the strided client axis.
    squares, shifts = torch.zeros_like(mu), torch.zeros_like(mu)
    step = max(1, _STD_BLOCK_BYTES // max(1, mu.numel() * mu.element_size()))
    block = torch.empty(min(count, step), *mu.shape, dtype=mu.dtype, device=mu.device)
    for start in range(0, count, step):
        part = rows[start : start + step]
        deviations = torch.sub(part, mu, out=block[: len(part)])
        shifts += deviations.sum(dim=0)
        squares += deviations.mul_(deviations).sum(dim=0)
    variance = squares.sub_(shifts.mul_(shifts).div_(count)).clamp_(min=0.0)
    return mu, variance.div_(count - 1 if unbiased else count).sqrt_()


def repeat_row(row: Tensor, count: int) -> Tensor:
    """``(d,)`` -> ``(count, d)``: every Byzantine client sends the same crafted row."""
    return row.unsqueeze(0).expand(count, -1).clone()
