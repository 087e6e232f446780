"""The defense contract.

A :class:`Defense` maps a round's update matrix ``(n, d)`` to one aggregate ``(d,)``. A
:class:`PreAggregator` maps ``(n, d)`` to ``(m, d)`` and composes in front of any rule through
:class:`Pipeline`; :func:`build_defense` assembles both from a config node such as
``{_target_: defenses.median.Median, f: 4, pre: [nnm]}``.

Optional hooks, used by the engine and ignored by rules that do not need them:

- :meth:`Defense.check` -- preconditions on ``n`` (called before training starts);
- :meth:`Defense.prepare` -- per-round information beyond the matrix (sample counts, client
  ids, the round's random generator, ``ctx.server_update()`` for the server's own update on
  its root set of ``root_size`` samples, as FLTrust needs);
- :meth:`Defense.reset`, :meth:`Defense.state_dict`, :meth:`Defense.load_state_dict` -- for
  stateful rules (centered clipping, FoolsGold);
- ``last_selected`` -- diagnostics: the input rows the last call selected, or ``None``;
- ``rotation_equivariant`` -- True for rules built only from inner products of the rows
  (norms, distances, weighted means of rows): ``rule(U Q) = rule(U) Q`` for every orthogonal
  ``Q``. Adaptive attacks then evaluate candidates exactly in the span of the rows, a space
  of dimension about ``n`` instead of ``d``. Coordinate-wise rules, stateful ones and those
  that use vectors from outside the matrix (FLTrust's server update) must leave it False.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

import torch
from torch import Tensor

from robustfl.context import RoundContext
from robustfl.errors import ConfigError


class Defense:
    """Base class of aggregation rules: ``__call__(updates: (n, d)) -> (d,)``.

    Randomized rules draw only from ``self.generator``, which :meth:`prepare` sets to the round's
    defense stream (and :meth:`simulate` to an attacker's).
    """

    #: Samples in the server's clean root set behind ``ctx.server_update()`` (FLTrust sets it).
    root_size: int | None = None
    #: ``rule(U Q) = rule(U) Q`` for orthogonal ``Q`` (see the module docstring).
    rotation_equivariant: bool = False
    #: True for rules that use per-client facts of the rows (sample counts, client ids), which
    #: a pre-aggregator that merges rows (bucketing) would make wrong.
    uses_client_identity: bool = False

    def __init__(self) -> None:
        self.last_selected: Tensor | None = None
        self.generator: torch.Generator | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, n: int) -> None:
        """Raise :class:`~robustfl.errors.ConfigError` if the rule cannot aggregate ``n`` rows."""

    def prepare(self, ctx: RoundContext) -> None:
        """Receive this round's context before :meth:`__call__` (default: its generator)."""
        self.set_generator(ctx.defense_generator)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """The generator randomized steps draw from (propagated through pipelines)."""
        self.generator = generator

    def reset(self) -> None:
        """Forget all state, for a new run."""
        self.last_selected = None

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint; stateless rules return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def simulate(self, updates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Aggregate ``updates`` on a copy, leaving this object's state alone (for adaptive
        attacks). Randomized steps of the copy draw from ``generator`` (the attacker's own
        stream); with ``None`` from a copy of this round's server generator, i.e. with the
        server's own draws."""
        twin = copy.deepcopy(self)
        if generator is not None:
            twin.set_generator(generator)
        return twin(updates)


class PreAggregator:
    """Base class of pre-aggregators: ``__call__(updates: (n, d)) -> (m, d)``; randomized ones
    draw from ``self.generator`` as defenses do."""

    #: ``stage(U Q) = stage(U) Q`` for orthogonal ``Q`` (see the module docstring).
    rotation_equivariant: bool = False
    generator: torch.Generator | None = None

    def __call__(self, updates: Tensor) -> Tensor:
        raise NotImplementedError

    def output_rows(self, n: int) -> int:
        """``m``, the number of rows produced from ``n`` (default: unchanged)."""
        return n

    def check(self, n: int) -> None:
        """Raise :class:`~robustfl.errors.ConfigError` if ``n`` input rows are not allowed."""

    def prepare(self, ctx: RoundContext) -> None:
        """Receive this round's context (default: its generator)."""
        self.set_generator(ctx.defense_generator)

    def set_generator(self, generator: torch.Generator | None) -> None:
        self.generator = generator


class Pipeline(Defense):
    """``rule(pre_k(...pre_1(updates)))``: pre-aggregators applied in order, then the rule."""

    def __init__(self, pre: list[PreAggregator], rule: Defense) -> None:
        super().__init__()
        self.pre = list(pre)
        self.rule = rule
        self.root_size = rule.root_size
        self.rotation_equivariant = rule.rotation_equivariant and all(
            stage.rotation_equivariant for stage in self.pre
        )

    def __call__(self, updates: Tensor) -> Tensor:
        for stage in self.pre:
            updates = stage(updates)
        out = self.rule(updates)
        # Row identities are lost once rows are mixed; report selections only without mixing.
        self.last_selected = self.rule.last_selected if not self.pre else None
        return out

    def check(self, n: int) -> None:
        for stage in self.pre:
            stage.check(n)
            if self.rule.uses_client_identity and stage.output_rows(n) != n:
                raise ConfigError(
                    f"defense={type(self.rule).__name__} uses per-client facts of its rows "
                    f"(sample counts or client ids), but {type(stage).__name__} merges rows "
                    "before it: drop that pre-aggregator or use the rule without weighting."
                )
            n = stage.output_rows(n)
        self.rule.check(n)

    def split_equivariant(self) -> tuple[list[PreAggregator], Defense]:
        """``(head, tail)`` with ``self(U) = tail(head_k(...head_1(U)))``: the leading
        rotation-equivariant pre-aggregators and the rest as one defense. Adaptive attacks run
        the head in the span of the rows and only the tail on all ``d`` coordinates."""
        count = 0
        while count < len(self.pre) and self.pre[count].rotation_equivariant:
            count += 1
        rest = self.pre[count:]
        return self.pre[:count], (Pipeline(rest, self.rule) if rest else self.rule)

    def prepare(self, ctx: RoundContext) -> None:
        for stage in self.pre:
            stage.prepare(ctx)
        self.rule.prepare(ctx)

    def set_generator(self, generator: torch.Generator | None) -> None:
        for stage in self.pre:
            stage.set_generator(generator)
        self.rule.set_generator(generator)

    def reset(self) -> None:
        super().reset()
        self.rule.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


#: Pre-aggregators that ``pre: [...]`` may name; ``module:Class`` in this package.
PRE_AGGREGATORS: dict[str, str] = {
    "nnm": "defenses.nnm:NearestNeighborMixing",
    "bucketing": "defenses.bucketing:Bucketing",
    "clipping": "defenses.clipping:Clipping",
}


def _instantiate(node: Any) -> Any:
    from robustfl.config import instantiate_option

    return instantiate_option(node)


def _build_pre(entry: Any, f: int | None) -> PreAggregator:
    """One ``pre`` entry: a name (``"nnm"``), ``{name: ..., **params}`` or ``{_target_: ...}``."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(entry, DictConfig):
        entry = OmegaConf.to_container(entry, resolve=True)
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not ("name" in entry or "_target_" in entry):
        raise ConfigError(
            f"defense.pre entry {entry!r} is invalid: use a name ({', '.join(PRE_AGGREGATORS)}), "
            "a mapping {name: NAME, param: value} or a mapping with _target_."
        )
    entry = dict(entry)
    if "_target_" not in entry:
        name = entry.pop("name")
        if name not in PRE_AGGREGATORS:
            raise ConfigError(
                f"defense.pre entry {name!r} is unknown: choose from {', '.join(PRE_AGGREGATORS)} "
                "or give a mapping with _target_."
            )
        module, cls = PRE_AGGREGATORS[name].split(":")
        factory = getattr(importlib.import_module(module), cls)
        wants_f = inspect.signature(factory).parameters.get("f")
        if wants_f is not None and "f" not in entry:
            if f is None and wants_f.default is inspect.Parameter.empty:
                raise ConfigError(
                    f"defense.pre {name} needs f, the assumed number of Byzantine clients, and "
                    f"this rule has none to lend it: write {{name: {name}, f: N}}."
                )
            if f is not None:
                entry["f"] = f
        stage = factory(**entry)
    else:
        stage = _instantiate(entry)
    if not isinstance(stage, PreAggregator):
        raise ConfigError(f"defense.pre entry {entry!r} did not build a PreAggregator.")
    return stage


def build_defense(node: Any) -> Defense:
    """Build a defense from its config node or a plain mapping (``name`` is metadata; ``pre``
    lists pre-aggregators, each built with the rule's ``f`` unless it sets its own)."""
    from omegaconf import DictConfig, OmegaConf

    plain = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    pre_entries = plain.pop("pre", None) or []
    plain.pop("name", None)
    rule = _instantiate(plain)
    if not isinstance(rule, Defense):
        raise ConfigError(
            f"defense._target_={plain.get('_target_')} did not build a defenses.base.Defense."
        )
    if not pre_entries:
        return rule
    return Pipeline([_build_pre(entry, plain.get("f")) for entry in pre_entries], rule)
