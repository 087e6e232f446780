"""Objects from config: everything a run needs, built and checked once before the first round.

:func:`build` validates the config, then builds the data, the partition, the model, the
local trainer, the attack, the defense (with its pre-aggregators), the server's optimizer and
the random streams, and returns them as one :class:`~robustfl.engine.Simulation`. Every user
error surfaces here, as :class:`~robustfl.errors.ConfigError` or
:class:`~robustfl.errors.DataError`, before any training.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from defenses.pipeline import Pipeline
from robustfl.compression import Compression
from robustfl.config import instantiate_option, option_label, validate
from robustfl.contracts import Attack, Defense, PreAggregator, overrides
from robustfl.data import Dataset
from robustfl.engine import DropoutSeeds, Evaluation, Federation, Simulation
from robustfl.errors import ConfigError
from robustfl.kernels import evaluation_plan
from robustfl.models import init_model
from robustfl.privacy import Privacy
from robustfl.seeding import DEVICE_STREAMS, STREAMS, numpy_generator, stream_seed, torch_generator
from robustfl.server import ServerOptimizer
from robustfl.training import ClientData, LocalTrainer, ParamLayout


def build_attack(node: Any) -> Attack:
    """The attack of an ``attack`` config node (a mapping with ``_target_``)."""
    attack = instantiate_option(node)
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack._target_={node['_target_']} did not build a contracts.Attack.")
    return attack


def build_defense(node: Any, pre: Any = None) -> Defense:
    """The defense of a ``defense`` node, behind the pre-aggregators of a ``pre`` node
    (``{name: {_target_: ..., ...}, ...}`` in order, as ``pre=[clipping,nnm]`` composes it)."""
    rule = instantiate_option(node)
    if not isinstance(rule, Defense):
        raise ConfigError(f"defense._target_={node['_target_']} did not build a contracts.Defense.")
    plain = OmegaConf.to_container(pre, resolve=True) if isinstance(pre, DictConfig) else pre
    if not plain:
        return rule
    if "_target_" in plain:
        raise ConfigError(
            "pre holds a bare pre-aggregator: its YAML needs the header '# @package pre.NAME' "
            "(see conf/pre/nnm.yaml), so that several can be selected in order."
        )
    stages = []
    for name, stage_node in plain.items():
        stage = instantiate_option(stage_node)
        if not isinstance(stage, PreAggregator):
            raise ConfigError(f"pre.{name} did not build a contracts.PreAggregator.")
        stages.append(stage)
    return Pipeline(stages, rule)


def build_privacy(node: Any) -> Privacy:
    """The privacy mechanism of a ``privacy`` node; none when the config has no such group."""
    if node is None:
        return Privacy()
    privacy = instantiate_option(node)
    if not isinstance(privacy, Privacy):
        raise ConfigError(f"privacy._target_={node['_target_']} did not build a privacy.Privacy.")
    return privacy


def build_compression(node: Any) -> Compression:
    """The compressor of a ``compression`` node; none when the config has no such group."""
    if node is None:
        return Compression()
    compression = instantiate_option(node)
    if not isinstance(compression, Compression):
        raise ConfigError(
            f"compression._target_={node['_target_']} did not build a compression.Compression."
        )
    return compression


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda is invalid here: no CUDA device is available. Use device=auto or "
            "device=cpu."
        )
    return torch.device(name)


def build_federation(cfg: DictConfig) -> Federation:
    fl = cfg.fl
    ids = torch.randperm(fl.num_clients, generator=torch_generator(cfg.seed, "byzantine"))
    per_round = fl.num_clients if fl.clients_per_round is None else int(fl.clients_per_round)
    sampling = fl.sampling
    if sampling == "auto":  # DP-FedAvg's account assumes Poisson sampling
        sampling = "poisson" if cfg.privacy.get("placement") == "central" else "fixed"
    return Federation(fl.num_clients, per_round, ids[: fl.num_byzantine].sort().values, sampling)


def build_client_data(
    cfg: DictConfig, dataset: Dataset, federation: Federation, attack: Attack
) -> tuple[ClientData, list]:
    """Every client's data (the Byzantine clients' passed through ``attack.poison_data``) and
    the partition (one index array per client)."""
    fl = cfg.fl
    is_byzantine = federation.is_byzantine
    partition = instantiate_option(cfg.partition, _partial_=True)
    parts = partition(
        dataset.y_train.numpy(),
        fl.num_clients,
        numpy_generator(cfg.seed, "partition"),
        byzantine=is_byzantine.numpy(),
        min_size=fl.batch_size,
    )
    smallest = min(len(p) for p in parts)
    if smallest < fl.batch_size:
        raise ConfigError(
            f"partition={option_label(cfg, 'partition')} leaves a client with {smallest} "
            f"samples, fewer than fl.batch_size={fl.batch_size}: every client needs at least one "
            "batch. Lower fl.batch_size or fl.num_clients, or change the partition's parameters."
        )
    attack.bind(dataset.num_classes, dataset.input_shape, float(dataset.x_train.max()))
    generator = torch_generator(cfg.seed, "poison_data")
    clients = []
    for client, idx in enumerate(parts):
        x, y = dataset.x_train[idx], dataset.y_train[idx]
        if is_byzantine[client]:
            x, y = attack.poison_data(x.clone(), y.clone(), generator)
        clients.append((x, y))
    return ClientData.from_parts(clients), parts


def build_root_data(cfg: DictConfig, dataset: Dataset, defense: Defense) -> ClientData | None:
    """The server's clean root set, for a defense that declares ``root_size`` (FLTrust)."""
    if defense.root_size is None:
        return None
    size = min(int(defense.root_size), len(dataset.y_train))
    if size < cfg.fl.batch_size:
        raise ConfigError(
            f"defense.root_size={size} is smaller than fl.batch_size={cfg.fl.batch_size}: the "
            "server needs one batch."
        )
    rows = torch.randperm(len(dataset.y_train), generator=torch_generator(cfg.seed, "root"))
    rows = rows[:size]
    return ClientData.from_parts([(dataset.x_train[rows], dataset.y_train[rows])])


def dropout_seeds(cfg: DictConfig, trainer: LocalTrainer) -> DropoutSeeds:
    """The run's :class:`DropoutSeeds`; a policy other than the default on a model without
    dropout is an error (it would change nothing)."""
    policy = DropoutSeeds(
        shared=cfg.fl.dropout_masks == "shared", period=cfg.fl.dropout_period, seed=cfg.seed
    )
    if not policy.per_round and not trainer.dropout:
        raise ConfigError(
            f"fl.dropout_masks={cfg.fl.dropout_masks} fl.dropout_period={cfg.fl.dropout_period} "
            f"is set but model={option_label(cfg, 'model')} has no dropout layers: leave both at "
            "their defaults (independent, 1) or choose a model with dropout."
        )
    return policy


def build(cfg: DictConfig) -> Simulation:
    """Validate ``cfg`` and build the run's objects (see the module docstring)."""
    validate(cfg)
    fl = cfg.fl
    device = resolve_device(str(getattr(cfg.device, "value", cfg.device)))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    attack = build_attack(cfg.attack)
    defense = build_defense(cfg.defense, cfg.get("pre"))
    privacy = build_privacy(cfg.get("privacy"))
    compression = build_compression(cfg.get("compression"))
    federation = build_federation(cfg)
    if fl.num_byzantine == 0 and (
        overrides(attack, Attack, "poison_data") or overrides(attack, Attack, "poison_gradients")
    ):
        raise ConfigError(
            f"attack={option_label(cfg, 'attack')} is configured but fl.num_byzantine=0, so no "
            "client would run it: set fl.num_byzantine >= 1, or use attack=none for the "
            "attack-free baseline."
        )
    per_round = federation.clients_per_round
    attack.check(per_round, min(fl.num_byzantine, per_round))
    defense.check(per_round)

    dataset: Dataset = instantiate_option(cfg.dataset, seed=cfg.seed)
    data, parts = build_client_data(cfg, dataset, federation, attack)
    root = build_root_data(cfg, dataset, defense)
    builder = instantiate_option(cfg.model, _partial_=True)
    model = init_model(
        builder, dataset.input_shape, dataset.num_classes, stream_seed(cfg.seed, "model")
    ).to(device)
    layout = ParamLayout.of(model)
    trainer = LocalTrainer(
        model, layout, fl.lr, fl.momentum, fl.weight_decay, fl.chunk_size, fl.dampening
    )
    backdoor = attack.backdoor_test_set(dataset.x_test, dataset.y_test)
    eval_model, eval_batch = evaluation_plan(model, device)
    evaluation = Evaluation(
        eval_model,
        layout,
        dataset.x_test.to(device),
        dataset.y_test.to(device),
        None if backdoor is None else (backdoor[0].to(device), backdoor[1].to(device)),
        eval_batch,
        "asr" if attack.targeted else "trigger_rate",
    )
    global_params = layout.flatten(model)
    privacy.bind(fl.num_clients, per_round, federation.sampling)
    compression.bind(fl.num_clients, layout.d, device)
    return Simulation(
        federation=federation,
        data=data.to(device),
        root=None if root is None else root.to(device),
        local_steps=fl.local_steps,
        batch_size=fl.batch_size,
        trainer=trainer,
        attack=attack,
        defense=defense,
        server=ServerOptimizer(
            global_params, fl.server_lr, fl.server_momentum, fl.server_weight_decay
        ),
        evaluation=evaluation,
        global_params=global_params,
        client_momentum=torch.zeros(fl.num_clients, layout.d, device=device)
        if fl.momentum
        else None,
        streams={
            name: torch_generator(cfg.seed, name, device if name in DEVICE_STREAMS else "cpu")
            for name in STREAMS
        },
        parts=parts,
        data_notes=dataset.notes,
        byzantine_momentum=fl.byzantine_momentum,
        dropout_seeds=dropout_seeds(cfg, trainer),
        privacy=privacy,
        compression=compression,
    )
