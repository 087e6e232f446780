"""The contracts between the engine, attacks and defenses.

The engine and both plugin packages import this module; it imports nothing of theirs.

- An :class:`Attack` may poison a Byzantine client's local data once, before training
  (:meth:`Attack.poison_data`), and replace the Byzantine rows of every round
  (:meth:`Attack.poison_gradients`). The engine calls whichever a subclass overrides.
- A :class:`Defense` maps a round's update matrix ``(n, d)`` to one aggregate ``(d,)``.
- A :class:`PreAggregator` maps ``(n, d)`` to ``(m, d)`` in front of a defense.
- A :class:`RoundContext` tells both what the round is, beyond the matrix.

**Spaces.** Defenses see *updates*, the clients' model deltas ``theta_local - theta_global``,
and return the aggregate the server applies as its negative gradient. Attacks see and return
*pseudo-gradients*, ``g = theta_global - theta_local = -update`` (one local SGD step at
learning rate ``lr``: ``lr`` times the minibatch gradient), the space in which papers define
attacks; the engine negates the rows on the way in and out. ``docs/conventions.md`` explains
the conventions, the threat models and how randomness is split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from robustfl.errors import ConfigError, TooFewRows

Knowledge = Literal["omniscient", "local"]


@dataclass
class RoundContext:
    """One round, as the engine sees it.

    Attributes:
        round: 0-based round number.
        defense: the run's defense (adaptive attacks simulate it on candidate matrices).
        global_params: ``(d,)`` flattened global model before this round's step.
        generator: the attack's random stream this round (also for its simulations of the
            defense: ``defense.simulate(updates, ctx.generator)``).
        num_clients: ``n``, the rows of this round's matrix.
        num_byzantine: ``f``, the Byzantine rows among them (participating this round).
        byzantine_rows: ``(f,)`` positions of the Byzantine rows in the ``(n, d)`` matrix.
        sample_counts: ``(n,)`` local training samples of each participating client.
        client_ids: ``(n,)`` the client id of every row (stateful rules keep per-client
            history).
        defense_generator: the defense's random stream this round.
        server_update: returns the server's own ``(d,)`` update on its clean root set
            (trained on demand; the defense must declare ``root_size``).
    """

    round: int
    defense: Defense
    global_params: Tensor
    generator: torch.Generator
    num_clients: int
    num_byzantine: int
    byzantine_rows: Tensor
    sample_counts: Tensor
    client_ids: Tensor
    defense_generator: torch.Generator | None = None
    server_update: Callable[[], Tensor] | None = None


def overrides(obj: object, base: type, method: str) -> bool:
    """Whether ``obj``'s class overrides ``base``'s method ``method``."""
    return getattr(type(obj), method) is not getattr(base, method)


def check_f(f: int, key: str = "defense.f") -> None:
    """``f``, an assumed number of Byzantine clients, must be a count."""
    if f < 0:
        raise ConfigError(f"{key}={f} is invalid: it must be >= 0.")


def require_rows(
    rule: str, n: int, minimum: int, condition: str, f: int, lower: str = "defense.f"
) -> None:
    """Raise :class:`TooFewRows` naming the numbers when ``n < minimum`` rows per round;
    ``lower`` is the parameter whose smaller value would relax the condition."""
    if n < minimum:
        raise TooFewRows(
            f"defense={rule} needs {condition}", f"n={n} rows per round and f={f}", minimum, lower
        )


class Attack:
    """Honest behaviour; subclasses override what they poison.

    Args:
        knowledge: ``"omniscient"``: the attacker sees the honest pseudo-gradients of the round
            (the threat model of ALIE, IPM and min-max); ``"local"``: only those its own
            clients computed honestly. :meth:`observed` returns the rows an attack may use.
    """

    #: A targeted attack (a backdoor) has an attack success rate on :meth:`backdoor_test_set`,
    #: logged as ``asr``; for an untargeted one that set measures the clean model's trigger
    #: rate (``trigger_rate``), the baseline a backdoor's success is read against.
    targeted = False
    #: Each crafted row is a function of that client's own honest row (and of random draws)
    #: alone, never of other rows: the attack can run inside the Byzantine client itself, as
    #: ``robustfl.flower`` runs it.
    row_wise = False
    #: The attack runs copies of the round's defense (``ctx.defense``) to choose its rows.
    simulates_defense = False

    def __init__(self, knowledge: Knowledge = "omniscient") -> None:
        if knowledge not in ("omniscient", "local"):
            raise ConfigError(
                f"attack.knowledge={knowledge!r} is invalid: use 'omniscient' or 'local'."
            )
        self.knowledge = knowledge

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "poison_updates" in vars(cls):  # the method's name before pseudo-gradients
            raise TypeError(
                f"{cls.__qualname__} defines poison_updates: the method is poison_gradients, and "
                "its rows are pseudo-gradients (minus the model deltas); see robustfl.contracts."
            )

    def bind(self, num_classes: int, input_shape: tuple[int, ...], input_max: float) -> None:
        """Learn the data set's facts before any poisoning (called once): the number of
        classes, the input shape without the batch dimension, the largest input value."""
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.input_max = float(input_max)

    def check(self, num_clients: int, num_byzantine: int) -> None:
        """Raise :class:`ConfigError` when the attack cannot run with ``num_clients`` rows per
        round of which ``num_byzantine`` are Byzantine."""

    def poison_data(
        self, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Data poisoning of one Byzantine client's local data ``x (m, ...)``, ``y (m,)``."""
        return x, y

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        """Model poisoning: the honest pseudo-gradients ``(h, d)`` and those the Byzantine
        clients computed honestly ``(f, d)`` -> the ``(f, d)`` pseudo-gradients they send."""
        return byzantine

    def backdoor_test_set(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        """For backdoors: the triggered test inputs and their target labels, from the clean
        test set ``x, y``; the engine reports the accuracy on them as ``asr`` (``targeted``)
        or ``trigger_rate``."""
        return None

    def observed(self, honest: Tensor, byzantine: Tensor) -> Tensor:
        """The rows this attacker may read, by its knowledge level: ``(rows, d)``."""
        return honest if self.knowledge == "omniscient" and len(honest) else byzantine

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (stateless attacks have none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Defense:
    """An aggregation rule: ``__call__(updates (n, d)) -> (d,)``.

    Optional hooks, ignored by rules that do not need them: :meth:`check` (preconditions on
    ``n``, before training), :meth:`prepare` (the round's context), :meth:`reset`,
    :meth:`state_dict` and :meth:`load_state_dict` (stateful rules), ``last_selected`` (the
    rows a selecting rule kept, for diagnostics). Randomized rules draw only from
    ``self.generator``, which :meth:`prepare` sets to the round's defense stream and
    :meth:`simulate` to an attacker's.
    """

    #: Samples in the server's clean root set behind ``ctx.server_update()`` (FLTrust).
    root_size: int | None = None
    #: ``rule(U Q) = rule(U) Q`` for every orthogonal ``Q``: true for rules built only from
    #: inner products of the rows (norms, distances, weighted means of rows). Adaptive attacks
    #: then evaluate candidates in the span of the rows, of dimension about ``n``, not ``d``.
    rotation_equivariant: bool = False
    #: True for rules that use per-client facts of their rows (sample counts, client ids); a
    #: pipeline refuses a row-merging pre-aggregator (bucketing) in front of them.
    uses_client_identity: bool = False
    #: The rule is the unweighted mean of its rows, whose sensitivity to one clipped row is
    #: ``C / m``: the release central differential privacy's epsilon bounds (DP-FedAvg).
    plain_mean: bool = False

    def __init__(self) -> None:
        self.last_selected: Tensor | None = None
        self.generator: torch.Generator | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(updates).")

    def check(self, n: int) -> None:
        """Raise :class:`ConfigError` if the rule cannot aggregate ``n`` rows."""

    def prepare(self, ctx: RoundContext) -> None:
        """Receive the round's context before :meth:`__call__` (default: its generator)."""
        self.set_generator(ctx.defense_generator)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """The generator randomized steps draw from."""
        self.generator = generator

    def reset(self) -> None:
        """Forget all state, for a new run."""
        self.last_selected = None

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint; stateless rules return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def simulation_copy(self, generator: torch.Generator | None = None) -> Defense:
        """A copy to aggregate on without touching this object's state (for adaptive attacks),
        its random steps drawing from ``generator`` (the attacker's own stream); with ``None``
        from a copy of the server's generator: the server's draws."""
        twin = copy.deepcopy(self)
        if generator is not None:
            twin.set_generator(generator)
        return twin

    def simulate(self, updates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Aggregate ``updates`` on :meth:`simulation_copy` ``(generator)``."""
        return self.simulation_copy(generator)(updates)


class PreAggregator:
    """A stage in front of a defense: ``__call__(updates (n, d)) -> (m, d)``. Randomized stages
    draw from ``self.generator``, as defenses do."""

    #: ``stage(U Q) = stage(U) Q`` for every orthogonal ``Q`` (see :class:`Defense`).
    rotation_equivariant: bool = False
    generator: torch.Generator | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(updates).")

    def output_rows(self, n: int) -> int:
        """``m``, the number of rows produced from ``n`` (default: unchanged)."""
        return n

    def check(self, n: int) -> None:
        """Raise :class:`ConfigError` if ``n`` input rows are not allowed."""

    def prepare(self, ctx: RoundContext) -> None:
        """Receive the round's context (default: its generator)."""
        self.set_generator(ctx.defense_generator)

    def set_generator(self, generator: torch.Generator | None) -> None:
        self.generator = generator
