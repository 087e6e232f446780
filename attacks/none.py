"""No attack: Byzantine clients behave honestly (the baseline every attack is compared with)."""

from robustfl.contracts import Attack


class NoAttack(Attack):
    """Honest behaviour; the Byzantine ids are still drawn, so runs stay paired."""
