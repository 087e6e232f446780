# ruff: noqa: E402
"""robustfl.flower: the strategy, the attack wrapper, and runs through Flower's engines.

Needs the ``flower`` extra (``pip install -e '.[flower]'``); skipped without it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore.task_identity import TaskIdentity

from attacks.adaptive import Adaptive
from attacks.alie import ALIE
from attacks.gaussian import Gaussian
from attacks.label_flip import LabelFlip
from defenses.krum import Krum
from defenses.mean import Mean
from defenses.median import Median
from defenses.pipeline import Pipeline
from robustfl.api import compose_config, run_experiment
from robustfl.build import build, build_attack
from robustfl.engine import Stopwatch, run_round
from robustfl.errors import ConfigError
from robustfl.flower import AttackInjection, RobustStrategy, attack_placement
from robustfl.flower.app import check_supported

EPS32 = float(torch.finfo(torch.float32).eps)


@pytest.fixture(autouse=True)
def task_identity():
    """Messages made outside a Flower run need the identity of a (fake) run and node."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def record(weights: np.ndarray) -> ArrayRecord:
    """Weights ``(d,)`` as an ArrayRecord of two arrays (a (2, k) matrix and the rest)."""
    weights = np.asarray(weights, np.float32)
    k = len(weights) // 3
    return ArrayRecord(
        {"w": Array(weights[: 2 * k].reshape(2, k).copy()), "b": Array(weights[2 * k :].copy())}
    )


def replies(sent: np.ndarray, updates: np.ndarray, ids: list[int]) -> list[Message]:
    """Replies of clients ``ids`` (node id = 100 + client id) whose weights are ``sent``
    plus their rows of ``updates``."""
    out = []
    for client, update in zip(ids, updates, strict=True):
        ask = Message(RecordDict(), dst_node_id=100 + client, message_type=MessageType.TRAIN)
        content = RecordDict(
            {
                "arrays": record(sent + update),
                "metrics": MetricRecord({"num-examples": 10, "client-id": client}),
            }
        )
        out.append(Message(content, reply_to=ask))
    return out


class FakeGrid:
    """The part of a Grid that strategies use to sample nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def run_strategy(strategy, sent: np.ndarray, rows: list[Message], server_round: int = 1):
    """configure_train to the replies' nodes, then aggregate_train: the new weights ``(d,)``
    and the train metrics."""
    nodes = [int(r.metadata.src_node_id) for r in rows]
    messages = strategy.configure_train(server_round, record(sent), ConfigRecord(), FakeGrid(nodes))
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(nodes)
    arrays, metrics = strategy.aggregate_train(server_round, rows)
    flat = np.concatenate([a.ravel() for a in arrays.to_numpy_ndarrays()])
    return flat, metrics


def test_robust_strategy_steps_from_the_sent_weights_with_the_rules_aggregate():
    """New weights = sent + server_lr * median(replies - sent), whatever the reply order; the
    mean with server_lr = 1 is FedAvg with equal weights."""
    gen = np.random.default_rng(0)
    sent = gen.normal(size=9).astype(np.float32)
    updates = gen.normal(size=(5, 9)).astype(np.float32)
    got, _ = run_strategy(
        RobustStrategy(Median(), server_lr=0.5), sent, replies(sent, updates, [0, 1, 2, 3, 4])
    )
    received = np.stack([(sent + u) - sent for u in updates])  # what float32 replies carry
    np.testing.assert_allclose(
        got, sent + 0.5 * np.median(received, axis=0), rtol=0, atol=4 * EPS32
    )
    shuffled, _ = run_strategy(
        RobustStrategy(Median(), server_lr=0.5), sent, replies(sent, updates[::-1], [4, 3, 2, 1, 0])
    )
    np.testing.assert_array_equal(got, shuffled)
    fedavg, _ = run_strategy(RobustStrategy(Mean()), sent, replies(sent, updates, [0, 1, 2, 3, 4]))
    np.testing.assert_allclose(fedavg, np.mean(sent + updates, axis=0), rtol=0, atol=8 * EPS32)


@pytest.mark.parametrize("trial", range(10))
def test_krum_strategy_picks_the_float64_choice_on_late_training_updates_and_logs_it(trial):
    """Rows with a large common offset (1e3) and a tiny spread (1e-3), one of them moved by
    3e-3 (late training): the strategy's Krum keeps the row a float64 computation picks, and
    reports its client id as ``robustfl-kept``. (Flower's own ``Krum`` strategy, which sums
    float32 squared distances without centring, picked another row in 8 of these 10 trials
    on this machine.)"""
    gen = np.random.default_rng(100 + trial)
    n, f, d = 9, 2, 1000
    updates = 1e3 + 1e-3 * gen.normal(size=(n, d))
    updates[gen.integers(n)] += 3e-3 * gen.normal(size=d)
    updates = updates.astype(np.float32)
    sent = np.zeros(d, np.float32)
    ids = list(range(10, 10 + n))
    got, metrics = run_strategy(RobustStrategy(Krum(f=f)), sent, replies(sent, updates, ids))
    x = updates.astype(np.float64)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)]
    best = int(np.argmin(scores))
    np.testing.assert_array_equal(got, updates[best])
    assert list(metrics["robustfl-kept"]) == [ids[best]]


def test_krum_strategy_on_identical_attacker_rows_picks_one_of_the_tied_copies():
    """Four identical rows (what ALIE, IPM and mimic send) among seven honest ones: every
    copy has the same float64 Krum score; the strategy returns that vector and reports one
    of the tied clients, whatever the order the replies arrive in."""
    gen = np.random.default_rng(13)
    honest = gen.normal(size=(7, 20))
    copies = np.repeat(0.05 * gen.normal(size=(1, 20)), 4, axis=0)
    updates = np.concatenate([honest, copies]).astype(np.float32)
    n, f = 11, 4
    x = updates.astype(np.float64)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    scores = np.array([np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)])
    tied = set(np.flatnonzero(scores == scores.min()).tolist())
    assert tied == {7, 8, 9, 10}  # the copies win, all with one score
    sent = np.zeros(20, np.float32)
    for order in (list(range(n)), list(range(n))[::-1]):
        rows = replies(sent, updates[order], order)
        got, metrics = run_strategy(RobustStrategy(Krum(f=f)), sent, rows)
        np.testing.assert_array_equal(got, updates[7])
        assert len(metrics["robustfl-kept"]) == 1 and metrics["robustfl-kept"][0] in tied


def test_without_client_ids_rows_follow_node_ids_and_the_kept_count_is_reported():
    """Replies without a ``client-id`` metric: rows are ordered by node id (here 2**63 and
    above, beyond int64), the rule still runs, and the metric counts the kept rows."""
    gen = np.random.default_rng(11)
    sent = np.zeros(6, np.float32)
    updates = gen.normal(size=(5, 6)).astype(np.float32)
    rows = []
    for k, update in enumerate(updates):
        ask = Message(RecordDict(), dst_node_id=2**63 + 7 * k, message_type=MessageType.TRAIN)
        content = RecordDict(
            {"arrays": record(sent + update), "metrics": MetricRecord({"num-examples": 10})}
        )
        rows.append(Message(content, reply_to=ask))
    strategy = RobustStrategy(Krum(f=1))
    got, metrics = run_strategy(strategy, sent, rows[::-1])
    assert strategy.last.identities == [2**63 + 7 * k for k in range(5)]
    assert metrics["robustfl-kept-count"] == 1 and "robustfl-kept" not in metrics
    assert any(np.array_equal(got, u) for u in updates)


def test_the_strategy_composes_under_flowers_server_side_dp_clipping():
    """Under ``DifferentialPrivacyServerSideFixedClipping`` (noise 0 here) the rule sees the
    clipped updates: the result is the median of the clipped rows."""
    gen = np.random.default_rng(5)
    sent = gen.normal(size=12).astype(np.float32)
    updates = (gen.normal(size=(5, 12)) * np.array([[0.1], [3.0], [0.5], [8.0], [1.0]])).astype(
        np.float32
    )
    wrapped = DifferentialPrivacyServerSideFixedClipping(
        RobustStrategy(Median()), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=5
    )
    got, _ = run_strategy(wrapped, sent, replies(sent, updates, [0, 1, 2, 3, 4]))
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    clipped = updates * np.minimum(1.0, 1.0 / norms)
    np.testing.assert_allclose(got, sent + np.median(clipped, axis=0), rtol=0, atol=1e-5)
    unclipped, _ = run_strategy(
        RobustStrategy(Median()), sent, replies(sent, updates, [0, 1, 2, 3, 4])
    )
    assert np.abs(unclipped - got).max() > 0.1  # the clipping acted


def test_attack_injection_replaces_the_byzantine_replies_by_alie_rows():
    """Clients 3 and 4 are Byzantine: the rule receives the honest rows and two copies of
    ``mu - z sigma`` of the honest pseudo-gradients (minus the updates)."""
    gen = np.random.default_rng(7)
    sent = gen.normal(size=15).astype(np.float32)
    updates = gen.normal(size=(7, 15)).astype(np.float32)
    inner = RobustStrategy(Mean())
    strategy = AttackInjection(inner, ALIE(z=1.0), byzantine=[3, 4])
    got, _ = run_strategy(strategy, sent, replies(sent, updates, list(range(7))))
    honest = -updates[[0, 1, 2, 5, 6]].astype(np.float64)
    crafted = honest.mean(0) - honest.std(0, ddof=1)
    expected = np.concatenate([updates[[0, 1, 2, 5, 6]], -np.stack([crafted, crafted])]).mean(0)
    np.testing.assert_allclose(got - sent, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        inner.last.updates[3], torch.tensor(-crafted, dtype=torch.float32), rtol=0, atol=1e-5
    )


def test_attack_injection_refuses_what_it_cannot_honour():
    with pytest.raises(ConfigError, match="client app"):
        AttackInjection(RobustStrategy(Mean()), LabelFlip(), byzantine=[0])
    from flwr.serverapp.strategy import FedAvg

    with pytest.raises(ConfigError, match="simulates the server's rule"):
        AttackInjection(FedAvg(), Adaptive(), byzantine=[0])
    sent = np.zeros(6, np.float32)
    strategy = AttackInjection(RobustStrategy(Mean()), ALIE(z=1.0), byzantine=[0, 1])
    with pytest.raises(ConfigError, match="every reply came from a Byzantine client"):
        run_strategy(strategy, sent, replies(sent, np.ones((2, 6), np.float32), [0, 1]))


@pytest.mark.parametrize(
    ("attack", "where"),
    [
        ("none", "none"),
        ("label_flip", "client"),
        ("backdoor", "client"),
        ("sign_flip", "client"),
        ("gaussian", "client"),
        ("free_rider", "client"),
        ("alie", "server"),
        ("ipm", "server"),
        ("mimic", "server"),
        ("minmax", "server"),
        ("adaptive", "server"),
    ],
)
def test_attack_placement(attack, where):
    assert attack_placement(build_attack(compose_config([f"attack={attack}"]).attack)) == where


def test_gaussian_around_the_mean_reads_other_rows_so_it_runs_on_the_server():
    assert attack_placement(Gaussian(center="mean")) == "server"


def test_from_config_builds_the_rule_with_its_pre_aggregators_and_server_optimizer():
    strategy = RobustStrategy.from_config(
        ["defense=median", "pre=[bucketing]", "fl.server_lr=0.25"], fraction_train=0.5
    )
    assert isinstance(strategy.defense, Pipeline)
    assert strategy.server_lr == 0.25 and strategy.fraction_train == 0.5


@pytest.mark.parametrize("override", ["privacy=local", "compression=top_k"])
def test_the_flower_path_refuses_the_channel_it_does_not_run(override):
    with pytest.raises(ConfigError, match="not available on the Flower engine"):
        check_supported(compose_config([*FAST, override]))


# ---------------------------------------------------------------- Flower's simulation engine

DIFFERENTIAL = {
    "alie vs median": ["attack=alie", "defense=median"],
    "centered clipping": ["attack=alie", "defense=centered_clipping"],
    "bucketing": ["attack=alie", "defense=median", "pre=[bucketing]"],
}
BASE = [*FAST, "fl.clients_per_round=null", "fl.rounds=3", "fl.eval_every=1", "threads=1"]


def engine_models(overrides: list[str]) -> list[torch.Tensor]:
    sim = build(compose_config([*BASE, *overrides]))
    models = []
    for round_index in range(3):
        run_round(sim, round_index, Stopwatch({}))
        models.append(sim.global_params.clone())
    return models


@pytest.fixture(scope="module")
def flower_models(tmp_path_factory):
    """The global model after each round of every DIFFERENTIAL config, through Flower's
    simulation engine (one simulation, the configs one after another)."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from robustfl.flower.app import client_app, serve

    models: dict[str, list[torch.Tensor]] = {}
    app = ServerApp()

    @app.main()
    def main(grid, context):
        for name, overrides in DIFFERENTIAL.items():
            models[name] = []
            serve(
                grid,
                compose_config([*BASE, *overrides]),
                str(tmp_path_factory.mktemp("flower")),
                on_round=lambda sim, name=name: models[name].append(sim.global_params.clone()),
            )

    run_simulation(
        app,
        client_app,
        num_supernodes=10,
        backend_config={
            "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
            "client_resources": {"num_cpus": 1},
        },
    )
    return models


@pytest.mark.parametrize("name", list(DIFFERENTIAL))
def test_flower_simulation_gives_the_engines_global_model_after_every_round(name, flower_models):
    """Digits, 10 clients of which 2 Byzantine, full participation, 3 rounds: the Flower run
    (clients training in Ray actors, ALIE injected on the server, the rule in RobustStrategy)
    ends every round on the engine's model, up to the rounding of the weights the replies
    carry (the server recovers ``u`` as ``(theta + u) - theta`` in float32: a few ulp of the
    weights per round). Another seed moves the model by far more than that bound."""
    engine = engine_models(DIFFERENTIAL[name])
    flower = flower_models[name]
    assert len(flower) == 3
    for round_index, (a, b) in enumerate(zip(engine, flower, strict=True)):
        bound = 8 * (round_index + 1) * EPS32 * float(a.abs().max())
        assert float((a - b).abs().max()) <= bound, (name, round_index)
    other = engine_models([*DIFFERENTIAL[name], "seed=1"])
    assert float((other[0] - engine[0]).abs().max()) > 1e3 * 8 * EPS32 * float(
        engine[0].abs().max()
    )


def test_robustfl_flower_writes_the_run_folder_the_report_reads(tmp_path):
    """``run_on_flower`` (the command's job) writes metrics.jsonl and summary.json with the
    engine named; its accuracies equal the engine's run; the report keeps the two engines in
    separate settings."""
    from robustfl.flower.cli import run_on_flower
    from robustfl.runs import collect

    overrides = [*BASE, "attack=sign_flip", "defense=krum", "fl.rounds=4", "fl.eval_every=2"]
    summary = run_on_flower(compose_config(overrides), tmp_path / "flower")
    reference = run_experiment(overrides, tmp_path / "engine")
    assert summary["engine"] == "flower-simulation" and reference["engine"] == "robustfl"
    assert summary["status"] == "completed"
    assert math.isclose(summary["final"]["accuracy"], reference["final"]["accuracy"], abs_tol=1e-3)
    lines = [
        json.loads(line)
        for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [line["round"] for line in lines] == [2, 4]
    assert all(line["byzantine_selected"] is not None for line in lines)  # Krum's kept rows
    frame = collect([tmp_path]).frame
    assert sorted(frame["engine"].fillna("-")) == ["-", "flower-simulation"]


# ---------------------------------------------------------------- Flower's deployment engine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def test_a_run_on_flowers_deployment_engine_gives_the_engines_result(tmp_path):
    """A SuperLink and 4 SuperNodes as separate processes on loopback (insecure mode), the
    app of docs/flower-app run with ``flwr run``: ALIE against the median, 2 rounds. The run
    folder it writes ends on the engine's accuracy and loss for the same overrides."""
    bin_dir = Path(sys.executable).parent
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",  # flower-superexec
        "WANDB_MODE": "disabled",
    }
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(Path(__file__).parents[1] / "docs" / "flower-app" / "pyproject.toml", app)
    overrides = [
        "fl.num_clients=4",
        "fl.num_byzantine=1",
        "fl.rounds=2",
        "fl.eval_every=1",
        "attack=alie",
        "defense=median",
        "progress=false",
        "threads=1",
        "tracker.mode=disabled",
    ]
    processes = []

    def start(*command: str, log: str) -> None:
        out = (tmp_path / log).open("w")
        processes.append(
            subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        )

    try:
        start(
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
            log="superlink.log",
        )
        wait_for_port(port)
        for client in range(4):
            start(
                str(bin_dir / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(free_port()),
                "--node-config",
                f"partition-id={client} num-partitions=4",
                log=f"supernode{client}.log",
            )
        run_dir = tmp_path / "run"
        config = f'overrides="{" ".join(overrides)}" run-dir="{run_dir}"'
        done = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(app), "test", "--run-config", config, "--stream"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"] == "flower-deployment" and summary["status"] == "completed"
    reference = run_experiment(overrides, tmp_path / "engine")
    assert math.isclose(summary["final"]["accuracy"], reference["final"]["accuracy"], abs_tol=1e-3)
    assert math.isclose(summary["final"]["loss"], reference["final"]["loss"], rel_tol=1e-4)


def test_the_docs_example_app_defends_against_alie(tmp_path):
    """docs/flower.md's app, run as a user would: the median with bucketing under ALIE brings
    the linear model's weights to the target 1 (within 0.05)."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "flower.md").read_text()
    body = re.search(r"<!-- file: flower_example.py -->\n```python\n(.*?)```", text, re.S)
    (tmp_path / "flower_example.py").write_text(body.group(1))
    done = subprocess.run(
        [sys.executable, "flower_example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("weights after 5 rounds:"))
    weights = json.loads(line.split(":", 1)[1])
    assert len(weights) == 5 and all(abs(w - 1) < 0.05 for w in weights)


def test_robustfl_flower_sweeps_like_robustfl(tmp_path):
    """``robustfl-flower -m``: one Flower run per job, each with its own run folder."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "robustfl-flower"),
            "-m",
            "defense=median,krum",
            *BASE,
            "fl.rounds=2",
            "attack=alie",
            "tracker.mode=disabled",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert [s["defense"] for s in summaries] == ["median", "krum"]
    assert all(s["engine"] == "flower-simulation" and s["status"] == "completed" for s in summaries)
    assert "alie vs krum (seed 0): accuracy" in done.stdout
