"""Typed config schema (Hydra structured configs) and the range checks that types cannot express.

The schema is registered in Hydra's ConfigStore as ``base_config`` and named first in
``conf/config.yaml``'s defaults list, so a wrong type (``fl.rounds=abc``) is rejected by Hydra
with the key in the message. :func:`validate` then checks ranges and relations between keys
before any data is loaded or model built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from robustfl.errors import ConfigError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class TrackerMode(str, Enum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class FLConfig:
    num_clients: int = 20
    num_byzantine: int = 4
    clients_per_round: int | None = None
    sampling: str = "auto"  # fixed | poisson | auto (poisson under central DP, else fixed)
    rounds: int = 40
    local_steps: int = 5
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.0
    dampening: float = 0.0
    byzantine_momentum: bool = True
    dropout_masks: str = "independent"  # independent | shared (one draw for every client)
    dropout_period: int = 1  # rounds one draw of the dropout seeds lasts
    weight_decay: float = 0.0
    server_lr: float = 1.0
    server_momentum: float = 0.0
    server_weight_decay: float = 0.0
    eval_every: int = 5
    chunk_size: int = 0


@dataclass
class TrackerConfig:
    mode: TrackerMode = TrackerMode.auto
    project: str = "robustfl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    job_type: str = "train"


@dataclass
class BaseConfig:
    fl: FLConfig = field(default_factory=FLConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # Groups whose keys differ per option: checked by their constructors instead.
    dataset: Any = None
    partition: Any = None
    model: Any = None
    attack: Any = None
    defense: Any = None
    pre: Any = None  # {name: pre-aggregator node}, in order: pre=[clipping,nnm]
    privacy: Any = None  # absent: no differential privacy
    compression: Any = None  # absent: no compression
    seed: int = 0
    device: Device = Device.auto
    threads: int = 0
    resume: bool = False
    checkpoint_every: int = 0
    checkpoint_seconds: float = 60.0
    progress: bool = True


RESOLVERS = {
    # ${add:10,${fl.num_byzantine}}: a client count as honest plus Byzantine
    "add": lambda *values: sum(values),
    # ${momentum_scaled:10.0,${fl.momentum}} = 10 / (1 - momentum): a threshold on gradients
    # carried over to momentum buffers, whose scale grows by 1 / (1 - momentum)
    "momentum_scaled": lambda value, momentum: value / (1.0 - momentum),
    # ${defense_label:}: the defense behind its pre-aggregators, "nnm+median", for folder names
    "defense_label": lambda *, _root_: defense_label(_root_),
}


def register_configs() -> None:
    """Register the schema and the resolvers of :data:`RESOLVERS`; idempotent."""
    ConfigStore.instance().store(name="base_config", node=BaseConfig)
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Check value ranges and relations between keys; raise :class:`ConfigError` on the first.

    Only the engine-level keys are checked here; group options (dataset, partition, model,
    attack, defense) check their own parameters when they are constructed, which also happens
    before training starts.
    """
    fl = cfg.fl
    for key in (
        "num_clients",
        "rounds",
        "local_steps",
        "batch_size",
        "eval_every",
    ):
        value = fl[key]
        _require(value >= 1, f"fl.{key}={value} is invalid: it must be an integer >= 1.")
    _require(
        0 <= fl.num_byzantine < fl.num_clients,
        f"fl.num_byzantine={fl.num_byzantine} is invalid: it must satisfy "
        f"0 <= num_byzantine < fl.num_clients={fl.num_clients}.",
    )
    per_round = fl.clients_per_round
    _require(
        per_round is None or 1 <= per_round <= fl.num_clients,
        f"fl.clients_per_round={per_round} is invalid: use null (every client) or a number "
        f"in [1, fl.num_clients={fl.num_clients}].",
    )
    _require(
        fl.sampling in ("auto", "fixed", "poisson"),
        f"fl.sampling={fl.sampling!r} is invalid: use 'fixed' (exactly fl.clients_per_round "
        "clients a round), 'poisson' (each client with probability clients_per_round / "
        "num_clients) or 'auto' (poisson under privacy=central, else fixed).",
    )
    _require(
        fl.dropout_masks in ("independent", "shared"),
        f"fl.dropout_masks={fl.dropout_masks!r} is invalid: use 'independent' (each client "
        "its own masks) or 'shared' (every client the same masks, as Karimireddy et al.'s code).",
    )
    _require(
        fl.dropout_period >= 1,
        f"fl.dropout_period={fl.dropout_period} is invalid: it must be an integer >= 1 (the "
        "rounds one draw of dropout masks lasts).",
    )
    for key in ("lr", "server_lr"):
        _require(fl[key] > 0, f"fl.{key}={fl[key]} is invalid: it must be > 0.")
    for key in ("momentum", "server_momentum"):
        _require(0 <= fl[key] < 1, f"fl.{key}={fl[key]} is invalid: it must be in [0, 1).")
    _require(
        0 <= fl.dampening <= 1, f"fl.dampening={fl.dampening} is invalid: it must be in [0, 1]."
    )
    for key in ("weight_decay", "server_weight_decay"):
        _require(fl[key] >= 0, f"fl.{key}={fl[key]} is invalid: it must be >= 0.")
    _require(
        fl.chunk_size >= 0,
        f"fl.chunk_size={fl.chunk_size} is invalid: use 0 (automatic: all clients at once, "
        "or cache-sized chunks for an MLP on the CPU) or a positive number of clients per chunk.",
    )
    _require(
        cfg.threads >= 0, f"threads={cfg.threads} is invalid: use 0 (torch's default) or >= 1."
    )
    _require(
        cfg.checkpoint_every >= 0,
        f"checkpoint_every={cfg.checkpoint_every} is invalid: use 0 (by time, "
        "checkpoint_seconds) or a number of rounds >= 1.",
    )
    _require(
        cfg.checkpoint_seconds >= 0,
        f"checkpoint_seconds={cfg.checkpoint_seconds} is invalid: use 0 (no checkpoints with "
        "checkpoint_every=0) or a number of seconds > 0.",
    )
    for group in OPTION_GROUPS:
        node = cfg.get(group)
        _require(
            isinstance(node, DictConfig) and "_target_" in node,
            f"{group} is not set to a valid option: choose one with {group}=NAME "
            f"(the options are the files in conf/{group}/).",
        )


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as their names), without Hydra's node."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    data.pop("hydra", None)
    return data


def instantiate_option(node: Any, **kwargs: Any) -> Any:
    """Instantiate a group option (a mapping with ``_target_``).

    Its ``name`` key is metadata, not a constructor argument. User errors raised by the target
    (:class:`ConfigError`, :class:`~robustfl.errors.DataError`) come out as themselves, not
    wrapped in Hydra's ``InstantiationException``, so the CLI can print them in one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from robustfl.errors import DataError

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    plain = dict(plain)
    plain.pop("name", None)
    try:
        return instantiate(plain, _convert_="all", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError | DataError):
            raise cause from None
        target = plain.get("_target_", "?")
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(
                f"{target}: {cause}. Check the option's keys against its docstring."
            ) from None
        if str(error).startswith("Error locating target"):
            reason = f" ({' '.join(str(cause).split())})" if cause is not None else ""
            raise ConfigError(
                f"_target_={target} cannot be imported{reason}: check the module path and "
                "class name, and that its package is installed (pip install ...) or on "
                "PYTHONPATH."
            ) from None
        raise


OPTION_GROUPS = ("dataset", "partition", "model", "attack", "defense")


def option_label(cfg: DictConfig, group: str) -> str:
    """The name results are labelled with for ``group``: the option's ``name`` key, else the
    option chosen on the command line (its file name), else its ``_target_``'s class name."""
    node = cfg.get(group)
    if node is not None and node.get("name"):
        return str(node.name)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    target = node.get("_target_") if node is not None else None
    return str(target).rsplit(".", 1)[-1].lower() if target else "?"


def fill_option_names(cfg: DictConfig) -> None:
    """Give every group option without a ``name`` key its :func:`option_label`, in place."""
    with open_dict(cfg):
        for group in OPTION_GROUPS:
            node = cfg.get(group)
            if isinstance(node, DictConfig) and not node.get("name"):
                node.name = option_label(cfg, group)


def channel_label(cfg: Any, group: str) -> str:
    """The label of a ``privacy`` or ``compression`` option with its parameters, from a config
    (or its plain mapping): ``"none"``, ``"local_dp(clip=1.0,noise_multiplier=2.0)"``."""
    node = cfg.get(group) or {}
    if not node or node.get("placement") == "none" or node.get("name") == "none":
        return "none"
    name = str(node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1].lower())
    skip = {"_target_", "name", "placement", "delta"}
    params = ",".join(f"{key}={node[key]}" for key in node if key not in skip)
    return f"{name}({params})" if params else name


def defense_label(cfg: Any) -> str:
    """The defense's name behind its pre-aggregators', from a config (or its plain mapping):
    ``"clipping+nnm+trimmed_mean"``."""
    pre = cfg.get("pre") or {}
    return "+".join([*pre, str(cfg["defense"].get("name", "?"))])


def defense_identity(cfg: Any) -> str:
    """A short digest of what the defense computes, from a resolved config (or its plain
    mapping): the rule's and the pre-aggregators' targets and parameters, without their
    ``name`` labels. Two runs labelled alike but with different digests ran different rules."""

    def plain(node: Any) -> dict[str, Any]:
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        return dict(node or {})

    def without_name(node: Any) -> dict[str, Any]:
        return {k: v for k, v in plain(node).items() if k != "name"}

    rule = {
        "defense": without_name(cfg.get("defense")),
        "pre": [[name, without_name(node)] for name, node in plain(cfg.get("pre")).items()],
    }
    blob = json.dumps(rule, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
