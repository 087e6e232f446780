"""No attack: Byzantine clients behave honestly (the baseline every attack is compared with)."""

from __future__ import annotations

from torch import Tensor

from attacks.backdoor import Backdoor
from robustfl.contracts import Attack
from robustfl.errors import ConfigError


class NoAttack(Attack):
    """Honest behaviour; the Byzantine ids are still drawn, so runs stay paired.

    The clean model's trigger rate is logged as ``trigger_rate``: how often the model maps
    test inputs stamped with the backdoor's trigger (``attack=backdoor``'s defaults, or these
    arguments) to its target, the baseline a backdoor's attack success rate is read against.

    Args:
        trigger_target, trigger_size, trigger_value: the reference trigger, as
            :class:`attacks.backdoor.Backdoor`'s ``target``, ``trigger_size`` and
            ``trigger_value``; ``trigger_size: 0`` logs no trigger rate.
    """

    def __init__(
        self,
        trigger_target: int = 0,
        trigger_size: int = 2,
        trigger_value: float | None = None,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        self.reference = None
        if trigger_size:
            self.reference = Backdoor(
                target=trigger_target, trigger_size=trigger_size, trigger_value=trigger_value
            )

    def bind(self, num_classes: int, input_shape: tuple[int, ...], input_max: float) -> None:
        super().bind(num_classes, input_shape, input_max)
        if self.reference is None:
            return
        try:
            self.reference.bind(num_classes, input_shape, input_max)
        except ConfigError:  # a trigger that does not fit this data set: no reference
            self.reference = None

    def backdoor_test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        return None if self.reference is None else self.reference.backdoor_test_set(x, y)
