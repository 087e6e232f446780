"""The benchmark's Flower apps: one robustfl config run through a Flower federation.

Every node runs :data:`client_app`; node ``partition-id = k`` (its node config) is client ``k``
of the config. The server (:class:`FlowerRounds`, inside a ServerApp) keeps this project's run
loop (evaluation, ``metrics.jsonl``, ``summary.json``, W&B) and draws each round's randomness
from the run's streams as the engine does: the participants, every participant's minibatch
indices and dropout seed. Each training message carries the config (YAML), the client's id
and its draws; the client app builds the same simulation (data, partition, Byzantine ids,
model) from the config, trains its one client with this project's trainer and replies with
its weights. Byzantine clients run their attack there when it is a client-side attack
(:func:`robustfl.flower.attack_placement`); omniscient attacks run in
:class:`~robustfl.flower.AttackInjection` on the server. Rules aggregate in
:class:`BenchmarkStrategy`, a :class:`~robustfl.flower.RobustStrategy` on the run's streams.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from robustfl.build import build
from robustfl.config import to_container
from robustfl.contracts import Attack, RoundContext, overrides
from robustfl.engine import (
    RoundResult,
    Simulation,
    Stopwatch,
    round_result,
    server_update,
    skip_reason,
    skipped_round,
    training_plan,
)
from robustfl.errors import ConfigError
from robustfl.flower.attack import AttackInjection, attack_placement
from robustfl.flower.records import flatten_arrays, unflatten_arrays
from robustfl.flower.strategy import CLIENT_KEY, RobustStrategy
from robustfl.seeding import torch_generator

CONFIG_KEY = "robustfl-config"  # the run's resolved config, YAML
PARTITION_KEY = "partition-id"  # Flower's node config: which client a node is


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, without Hydra's node (what the client apps build from)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def check_supported(cfg: DictConfig) -> None:
    """Refuse what the Flower path does not run, before any work."""
    for group in ("privacy", "compression"):
        node = cfg.get(group)
        if node is not None and node.get("name", "none") != "none":
            raise ConfigError(
                f"{group}={node.get('name')} is not available on the Flower engine: robustfl's "
                f"{group} acts on the whole update matrix. Use {group}=none, or Flower's own "
                "DP wrappers around RobustStrategy (docs/flower.md)."
            )


# --------------------------------------------------------------------------- client side

_SIMULATIONS: dict[str, Simulation] = {}


def simulation_for(text: str) -> Simulation:
    """The simulation of a config (YAML), built once per process."""
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _SIMULATIONS:
        cfg = OmegaConf.create(text)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        _SIMULATIONS.clear()  # one config at a time: a node serves one run
        _SIMULATIONS[key] = build(cfg)
    return _SIMULATIONS[key]


def local_update(
    sim: Simulation, client: int, theta: Tensor, config: ConfigRecord, state: RecordDict
) -> Tensor:
    """Client ``client``'s update ``(d,)`` from the weights ``theta (d,)``: its local training
    on the minibatches and dropout seed the server drew, with its momentum buffer kept in the
    node's ``state``, then its attack when it is Byzantine and the attack runs in clients."""
    d = sim.trainer.layout.d
    batches = torch.tensor(list(config["batches"]), dtype=torch.long)
    batches = batches.view(1, sim.local_steps, sim.batch_size).to(sim.device)
    seeds = torch.tensor([int(config["dropout-seed"])]) if "dropout-seed" in config else None
    byzantine = bool(sim.federation.is_byzantine[client])
    momentum, key = None, f"robustfl-momentum-{config['run-digest']}"
    if sim.client_momentum is not None:
        momentum = torch.zeros(1, d, device=sim.device)
        if key in state and not (byzantine and not sim.byzantine_momentum):
            momentum[0] = flatten_arrays(state[key]).to(sim.device)
    out = torch.empty(1, d, device=sim.device)
    update = sim.trainer.train(
        theta.to(sim.device), sim.data.x, sim.data.y, batches, momentum, out, seeds
    )[0]
    if momentum is not None:
        state[key] = ArrayRecord({"buffer": Array(momentum[0].cpu().numpy().copy())})
    client_side = attack_placement(sim.attack) == "client"
    if byzantine and client_side and overrides(sim.attack, Attack, "poison_gradients"):
        ctx = RoundContext(
            round=int(config["round"]),
            defense=None,
            global_params=theta,
            generator=torch_generator(
                int(config["seed"]), f"attack/client-{client}/round-{config['round']}"
            ),
            num_clients=int(config["participants"]),
            num_byzantine=int(config["byzantine"]),
            byzantine_rows=torch.zeros(1, dtype=torch.long),
            sample_counts=sim.data.sizes[[client]].to(update.dtype),
            client_ids=torch.tensor([client]),
        )
        empty = update.new_zeros(0, d)
        update = -sim.attack.poison_gradients(empty, -update[None], ctx)[0]
    return update.cpu()


client_app = ClientApp()


@client_app.query()
def identify(message: Message, context: Context) -> Message:
    """Tell the server which client this node is (its ``partition-id``)."""
    client = int(context.node_config[PARTITION_KEY])
    return Message(RecordDict({"metrics": MetricRecord({CLIENT_KEY: client})}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local training (see :func:`local_update`)."""
    config = message.content["config"]
    sim = simulation_for(str(config[CONFIG_KEY]))
    client = int(config[CLIENT_KEY])
    node_client = context.node_config.get(PARTITION_KEY)
    if node_client is not None and int(node_client) != client:
        raise RuntimeError(f"node {PARTITION_KEY}={node_client} was sent client {client}'s work.")
    if int(config.get("client-threads", 0)) > 0:  # a share of the node's cores (simulation)
        torch.set_num_threads(int(config["client-threads"]))
    sent = message.content["arrays"]
    theta = flatten_arrays(sent)
    update = local_update(sim, client, theta, config, context.state)
    metrics = MetricRecord({"num-examples": int(sim.data.sizes[client]), CLIENT_KEY: client})
    content = RecordDict({"arrays": unflatten_arrays(theta + update, sent), "metrics": metrics})
    return Message(content, reply_to=message)


# --------------------------------------------------------------------------- server side


def discover_clients(grid: Grid, num_clients: int, timeout: float = 120.0) -> dict[int, int]:
    """``{client id: node id}`` for ``num_clients`` nodes, asked by a query message once they
    have all connected."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of fl.num_clients={num_clients} Flower nodes connected "
                f"within {timeout:.0f} s: start one SuperNode per client."
            )
        time.sleep(0.5)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = [reply for reply in replies if reply.has_error()]
    if failed or len(replies) != len(nodes):
        reasons = "; ".join(reply.error.reason for reply in failed)
        raise RuntimeError(
            f"{len(nodes) - len(replies) + len(failed)} nodes did not answer: {reasons}"
        )
    found = {
        int(reply.content["metrics"][CLIENT_KEY]): int(reply.metadata.src_node_id)
        for reply in replies
    }
    if sorted(found) != list(range(num_clients)):
        raise RuntimeError(
            f"the nodes' {PARTITION_KEY} values {sorted(found)} are not 0..{num_clients - 1}: "
            "give each SuperNode its own partition-id."
        )
    return found


class BenchmarkStrategy(RobustStrategy):
    """:class:`RobustStrategy` on a run's simulation: its defense, the defense's stream, the
    server optimizer's state (all checkpointed with the run) and FLTrust's root set. Each
    round's messages go to the participants the server drew, each with its own draws."""

    def __init__(
        self, sim: Simulation, cfg: DictConfig, nodes: dict[int, int], client_threads: int = 0
    ) -> None:
        super().__init__(
            sim.defense,
            seed=int(cfg.seed),
            server_update=lambda theta: server_update(sim),
            fraction_evaluate=0.0,
        )
        self.sim, self.nodes = sim, nodes
        self.defense_generator = sim.streams["defense"]
        self.config = config_yaml(cfg)
        self.digest = hashlib.sha256(self.config.encode()).hexdigest()[:16]
        self.seed = int(cfg.seed)
        self.client_threads = client_threads
        self.plan: tuple[Tensor, Tensor, Tensor | None] | None = None

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        clients, batches, seeds = self.plan
        byzantine = int(self.sim.federation.is_byzantine[clients].sum())
        messages = []
        for row, client in enumerate(clients.tolist()):
            record = ConfigRecord(
                {
                    CONFIG_KEY: self.config,
                    "run-digest": self.digest,
                    "seed": self.seed,
                    CLIENT_KEY: client,
                    "round": server_round - 1,
                    "participants": len(clients),
                    "byzantine": byzantine,
                    "batches": batches[row].flatten().tolist(),
                    "client-threads": self.client_threads,
                }
            )
            if seeds is not None:
                record["dropout-seed"] = int(seeds[row])
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: record})
            messages.append(
                Message(content, dst_node_id=self.nodes[client], message_type=MessageType.TRAIN)
            )
        return messages

    def step(self, theta: Tensor, aggregate: Tensor) -> Tensor:
        self.sim.global_params.copy_(theta)
        self.sim.server.step(aggregate)
        return self.sim.global_params.clone()


def weights_record(sim: Simulation) -> ArrayRecord:
    """The global model as an ``ArrayRecord``, one array per named parameter."""
    views = sim.trainer.layout.unflatten(sim.global_params.detach().cpu())
    return ArrayRecord({name: Array(view.numpy().copy()) for name, view in views.items()})


class FlowerRounds:
    """The rounds of a run through a Flower grid (what :func:`robustfl.run.run` calls)."""

    def __init__(
        self, grid: Grid, sim: Simulation, cfg: DictConfig, timeout: float, client_threads: int = 0
    ) -> None:
        check_supported(cfg)
        self.grid, self.sim, self.timeout = grid, sim, timeout
        self.nodes = discover_clients(grid, sim.federation.num_clients, timeout)
        self.rule = BenchmarkStrategy(sim, cfg, self.nodes, client_threads)
        self.strategy: RobustStrategy | AttackInjection = self.rule
        if attack_placement(sim.attack) == "server":
            self.strategy = AttackInjection(
                self.rule, sim.attack, sim.federation.byzantine_ids.tolist(), seed=int(cfg.seed)
            )
            self.strategy.generator = sim.streams["attack"]  # checkpointed with the run
        self.template = weights_record(sim)

    def __call__(self, round_index: int, watch: Stopwatch) -> RoundResult:
        sim = self.sim
        clients = sim.federation.participants(sim.streams["sampling"])
        is_byzantine = sim.federation.is_byzantine[clients]
        if sim.federation.sampling == "poisson":
            reason = skip_reason(sim, clients, int(is_byzantine.sum()))
            if reason is not None:
                return skipped_round(clients, reason)
        batches, seeds = training_plan(sim, clients, round_index)
        self.rule.plan = (clients, batches, seeds)
        arrays = unflatten_arrays(sim.global_params, self.template)
        server_round = round_index + 1
        with watch("train_s"):
            messages = list(
                self.strategy.configure_train(server_round, arrays, ConfigRecord(), self.grid)
            )
            replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        failed = [reply for reply in replies if reply.has_error()]
        if failed or len(replies) != len(messages):
            reasons = "; ".join(f"node {r.metadata.src_node_id}: {r.error.reason}" for r in failed)
            raise RuntimeError(
                f"round {server_round}: {len(messages) - len(replies) + len(failed)} of "
                f"{len(messages)} clients sent no update ({reasons or 'timed out'})."
            )
        with watch("aggregate_s"):
            new, _ = self.strategy.aggregate_train(server_round, replies)
        sim.global_params.copy_(flatten_arrays(new).to(sim.device))
        return self.result(is_byzantine)

    def result(self, is_byzantine: Tensor) -> RoundResult:
        """The round's :class:`RoundResult`, as the engine's ``run_round`` reports it."""
        last = self.rule.last
        byzantine_ids = set(self.sim.federation.byzantine_ids.tolist())
        kept = None if last.kept is None else sum(i in byzantine_ids for i in last.kept)
        return round_result(
            last.aggregate, last.updates, is_byzantine, kept, self.sim.global_params
        )


def serve(
    grid: Grid,
    cfg: DictConfig,
    run_dir: str,
    tracker: Any = None,
    engine: str = "flower-simulation",
    timeout: float = 600.0,
    on_round: Callable[[Simulation], None] | None = None,
    client_threads: int = 0,
) -> dict[str, Any]:
    """Run the experiment ``cfg`` through ``grid``; returns the run's summary. ``on_round``
    sees the simulation after every round; ``client_threads > 0`` sets the client apps'
    torch threads when ``cfg.threads`` is 0 (their default)."""
    from robustfl.run import run

    def rounds(sim: Simulation):
        threads = int(cfg.threads) or client_threads
        flower = FlowerRounds(grid, sim, cfg, timeout, threads)
        if on_round is None:
            return flower

        def round_and_report(round_index: int, watch: Stopwatch) -> RoundResult:
            result = flower(round_index, watch)
            on_round(sim)
            return result

        return round_and_report

    return run(cfg, run_dir, tracker, runner=rounds, engine=engine, resumable=not cfg.fl.momentum)


server_app = ServerApp()


@server_app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    """The deployment engine's server: the run config's ``overrides`` (robustfl's command-line
    overrides, space-separated) and ``run-dir``."""
    from robustfl.api import compose_config
    from robustfl.tracking import WandbTracker

    overrides = str(context.run_config.get("overrides", "")).split()
    cfg = compose_config(overrides)
    run_dir = str(context.run_config.get("run-dir", "outputs/flower"))
    serve(grid, cfg, run_dir, WandbTracker(cfg.tracker), engine="flower-deployment")
