"""robustfl's rules and attacks inside Flower federations (the optional extra ``flower``).

- :class:`RobustStrategy`: a Flower strategy (Message API) that aggregates with any defense of
  this project, pre-aggregators included, and steps with this project's server optimizer.
- :class:`AttackInjection`: a strategy wrapper in which a colluding adversary with the
  server's view replaces the Byzantine nodes' replies (omniscient attacks: ALIE, IPM,
  min-max, ...).
- ``robustfl-flower``: the same Hydra config as ``robustfl``, run through Flower's simulation
  engine (:mod:`robustfl.flower.cli`); :mod:`robustfl.flower.app` holds the client and server
  apps, also for Flower's deployment engine.

Nothing else in robustfl imports this package; it needs ``pip install 'robustfl[flower]'``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "robustfl.flower needs Flower: install the extra with pip install 'robustfl[flower]' "
        "(or: pip install 'flwr[simulation]>=1.42,<2')."
    ) from error

from robustfl.flower.attack import AttackInjection, attack_placement
from robustfl.flower.records import flatten_arrays, unflatten_arrays
from robustfl.flower.strategy import AggregateRecord, RobustStrategy

__all__ = [
    "AggregateRecord",
    "AttackInjection",
    "RobustStrategy",
    "attack_placement",
    "flatten_arrays",
    "unflatten_arrays",
]
