import json
import math

import pytest
import torch
from conftest import FAST

from robustfl.api import compose_config, run_experiment
from robustfl.build import build
from robustfl.contracts import Defense
from robustfl.engine import RoundResult, Stopwatch, run_round
from robustfl.errors import ConfigError
from robustfl.results import read_metrics
from robustfl.run import divergence_reason
from robustfl.server import ServerOptimizer


def test_default_config_without_attack_reaches_90_percent(run_dir):
    summary = run_experiment(["attack=none", "progress=false"], run_dir)
    assert summary["status"] == "completed"
    assert summary["final"]["accuracy"] >= 0.90


def test_results_files(run_dir):
    summary = run_experiment([*FAST, "attack=sign_flip", "defense=median"], run_dir)
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [2, 4]
    for record in records:
        for key in (
            "accuracy",
            "loss",
            "robustness_error",
            "time_train_s",
            "time_attack_s",
            "time_aggregate_s",
            "time_eval_s",
        ):
            assert key in record
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed"
    assert on_disk["final"]["accuracy"] == records[-1]["accuracy"]
    assert len(on_disk["byzantine_ids"]) == 2
    for key in ("train_s", "attack_s", "aggregate_s", "eval_s", "total_s"):
        assert on_disk["timings"][key] >= 0
    assert len(on_disk["partition_hash"]) == 16 and len(on_disk["config_hash"]) == 16


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    overrides = [
        *FAST,
        "attack=gaussian",
        "defense=trimmed_mean",
        "fl.momentum=0.9",
        "fl.clients_per_round=7",
    ]
    a = run_experiment(overrides, tmp_path / "a")
    b = run_experiment(overrides, tmp_path / "b")
    c = run_experiment([*overrides, "seed=1"], tmp_path / "c")
    strip = [
        {k: v for k, v in r.items() if not k.startswith(("time_", "elapsed"))}
        for r in read_metrics(tmp_path / "a")
    ]
    assert strip == [
        {k: v for k, v in r.items() if not k.startswith(("time_", "elapsed"))}
        for r in read_metrics(tmp_path / "b")
    ]
    assert a["config_hash"] == b["config_hash"] != c["config_hash"]
    assert a["final"]["loss"] != c["final"]["loss"]


def test_runs_differing_only_in_defense_are_paired(tmp_path):
    a = run_experiment([*FAST, "partition=dirichlet", "defense=median"], tmp_path / "a")
    b = run_experiment([*FAST, "partition=dirichlet", "defense=krum"], tmp_path / "b")
    assert a["partition_hash"] == b["partition_hash"]
    assert a["byzantine_ids"] == b["byzantine_ids"]
    assert a["config_hash"] != b["config_hash"]


def test_divergence_stops_the_run_and_keeps_metrics(run_dir):
    summary = run_experiment(
        [*FAST, "fl.rounds=6", "fl.eval_every=1", "attack=nonfinite", "defense=mean"], run_dir
    )
    assert summary["status"] == "diverged"
    assert summary["rounds_completed"] == 1
    records = read_metrics(run_dir)
    assert len(records) == 1 and records[0]["accuracy"] is None


def test_byzantine_rows_that_get_through_are_counted(run_dir):
    summary = run_experiment([*FAST, "attack=gaussian", "attack.std=100", "defense=krum"], run_dir)
    assert summary["byzantine_selected_share"] == 0.0
    assert summary["final"]["accuracy"] > 0.5


def test_client_momentum_persists_and_server_momentum_applies(tmp_path):
    plain = run_experiment(FAST, tmp_path / "a")
    with_momentum = run_experiment(
        [*FAST, "fl.momentum=0.9", "fl.server_momentum=0.5"], tmp_path / "b"
    )
    assert plain["final"]["loss"] != with_momentum["final"]["loss"]
    sim = build(compose_config([*FAST, "fl.momentum=0.9"]))
    assert sim.client_momentum is not None and sim.client_momentum.shape[0] == 10


def test_byzantine_clients_without_momentum_send_plain_gradients():
    """``fl.byzantine_momentum=false``: in round 2 the Byzantine rows are those of a run without
    momentum, the honest rows those of a run with it (round 1 is the same in all three runs:
    every buffer starts at zero, so it equals the first gradient)."""
    base = [*FAST, "attack=label_flip", "fl.local_steps=1", "fl.lr=1.0", "fl.server_lr=0.1"]
    sims = {
        name: build(compose_config([*base, *extra]))
        for name, extra in {
            "plain": ["fl.momentum=0"],
            "momentum": ["fl.momentum=0.9"],
            "byzantine_plain": ["fl.momentum=0.9", "fl.byzantine_momentum=false"],
        }.items()
    }
    rows = {}
    for name, sim in sims.items():
        for round_index in range(2):
            run_round(sim, round_index, Stopwatch({}))
        rows[name] = sim.updates.clone()
    byz = sims["plain"].federation.is_byzantine
    torch.testing.assert_close(rows["byzantine_plain"][byz], rows["plain"][byz])
    torch.testing.assert_close(rows["byzantine_plain"][~byz], rows["momentum"][~byz])
    assert not torch.allclose(rows["byzantine_plain"][byz], rows["momentum"][byz])


@pytest.mark.parametrize("server_momentum", [0.0, 0.9])
def test_server_weight_decay_shrinks_the_model_as_server_sgd_does(server_momentum):
    """``theta <- theta - lr_s buf``, ``buf = m buf + (-aggregate + wd theta)`` (``buf = g`` on the
    first step): with the same clients' updates, the two models differ after one round by
    exactly ``-lr_s * wd * theta``, with or without server momentum."""
    base = [*FAST, "fl.server_lr=0.5", f"fl.server_momentum={server_momentum}"]
    plain = build(compose_config(base))
    decayed = build(compose_config([*base, "fl.server_weight_decay=0.1"]))
    start = plain.global_params.clone()
    torch.testing.assert_close(decayed.global_params, start)
    run_round(plain, 0, Stopwatch({}))
    run_round(decayed, 0, Stopwatch({}))
    torch.testing.assert_close(
        decayed.global_params - plain.global_params, -0.5 * 0.1 * start, rtol=1e-4, atol=1e-6
    )


def test_server_optimizer_by_hand():
    theta = torch.tensor([1.0, -2.0])
    server = ServerOptimizer(theta, lr=0.5, momentum=0.9, weight_decay=0.1)
    server.step(torch.tensor([1.0, 1.0]))  # g = -1 + 0.1 theta = (-0.9, -1.2) = buf
    torch.testing.assert_close(theta, torch.tensor([1.45, -1.4]))
    server.step(torch.tensor([0.0, 2.0]))  # g = (0.145, -2.14); buf = 0.9 buf + g
    torch.testing.assert_close(
        theta, torch.tensor([1.45 - 0.5 * (-0.81 + 0.145), -1.4 - 0.5 * (-1.08 - 2.14)])
    )


def test_a_defense_that_asks_for_the_server_update_must_declare_its_root_set():
    from defenses.mean import Mean

    class Asks(Mean):
        def prepare(self, ctx):
            super().prepare(ctx)
            self.server_vector = ctx.server_update()

    sim = build(compose_config(FAST))
    sim.defense = Asks()
    with pytest.raises(RuntimeError, match="root_size"):
        run_round(sim, 0, Stopwatch({}))


def test_client_sampling_draws_clients_per_round(run_dir):
    summary = run_experiment([*FAST, "fl.clients_per_round=5", "defense=median"], run_dir)
    assert summary["status"] == "completed"
    counts = [r["num_byzantine"] for r in read_metrics(run_dir)]
    assert all(0 <= c <= 2 for c in counts)


def test_fltrust_gets_the_server_update_through_the_hook(run_dir):
    summary = run_experiment(
        [*FAST, "attack=sign_flip", "defense=fltrust", "defense.root_size=50"], run_dir
    )
    assert summary["status"] == "completed"
    # Flipped rows have negative cosine with the server update: trust 0, never selected.
    assert summary["byzantine_selected_share"] == 0.0


def test_robustness_error_is_zero_for_mean_without_byzantine_clients(run_dir):
    run_experiment([*FAST, "fl.num_byzantine=0"], run_dir)
    assert all(r["robustness_error"] < 1e-5 for r in read_metrics(run_dir))
    assert not math.isnan(read_metrics(run_dir)[-1]["loss"])


def test_update_matrix_is_finite_float32():
    sim = build(compose_config(FAST))
    assert sim.global_params.dtype == torch.float32
    assert torch.isfinite(sim.global_params).all()


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn"])
def test_every_model_trains_end_to_end(tmp_path, model):
    summary = run_experiment([*FAST, f"model={model}", "fl.rounds=6"], tmp_path / model)
    assert summary["status"] == "completed"
    assert summary["final"]["accuracy"] > 0.3


def test_resnet20_trains_on_cifar_shaped_data(run_dir):
    summary = run_experiment(
        [
            "fl.num_clients=2",
            "fl.num_byzantine=0",
            "fl.rounds=30",
            "fl.eval_every=10",
            "fl.batch_size=32",
            "fl.lr=0.05",
            "fl.momentum=0.9",
            "dataset=synthetic_cifar",
            "dataset.num_samples=1000",
            "model=resnet20",
            "model.width=4",
            "progress=false",
        ],
        run_dir,
    )
    assert summary["status"] == "completed" and summary["num_parameters"] == 17_326
    assert summary["final"]["accuracy"] > 0.3  # ten classes: chance is 0.1


class WrongShape(Defense):
    """A rule with a bug: it returns one row with its batch dimension, (1, d)."""

    def __call__(self, updates):
        return updates[:1]


class ReturnsNaN(Defense):
    def __call__(self, updates):
        return torch.full_like(updates[0], math.nan)


def test_a_rules_output_of_the_wrong_shape_fails_naming_the_rule_and_round(tmp_path):
    overrides = [
        *FAST,
        "defense=median",
        "defense._target_=test_engine.WrongShape",
        "~defense.name",
    ]
    with pytest.raises(TypeError, match=r"WrongShape returned shape \(1, \d+\) in round 1"):
        run_experiment(overrides, tmp_path / "wrong")


def test_a_rule_returning_nan_is_told_apart_from_training_that_diverged(tmp_path):
    summary = run_experiment(
        [*FAST, "defense=median", "defense._target_=test_engine.ReturnsNaN", "~defense.name"],
        tmp_path / "nan",
    )
    assert summary["status"] == "diverged"
    assert summary["reason"] == (
        "the rule (ReturnsNaN) returned non-finite values from finite updates in round 1"
    )
    summary = run_experiment([*FAST, "attack=nonfinite", "defense=mean"], tmp_path / "attack")
    assert summary["reason"] == "non-finite updates went through the rule (Mean) in round 1"
    step = RoundResult(False, True, True, 0.0, None, 0)  # a finite aggregate, a non-finite model
    assert divergence_reason(step, "Mean", 3) == (
        "training diverged: the global model became non-finite in round 3"
    )


def dropout_seeds_by_round(overrides: list[str], rounds: int) -> list[torch.Tensor]:
    """The clients' dropout seeds of each round, as the engine hands them to the trainer."""
    sim = build(compose_config([*FAST, "model=karimireddy_cnn", "threads=1", *overrides]))
    seen = []
    train = sim.trainer.train

    def recording_train(*args, **kwargs):
        seen.append(args[6].clone())
        return train(*args, **kwargs)

    sim.trainer.train = recording_train
    for round_index in range(rounds):
        run_round(sim, round_index, Stopwatch({}))
    return seen


def test_shared_dropout_masks_give_every_client_one_seed_that_lasts_the_period():
    """``fl.dropout_masks=shared fl.dropout_period=3`` (Karimireddy et al.'s code shares one
    RNG state among the workers for an epoch): one seed for every client, the same in rounds
    0 to 2, another from round 3; the default draws distinct seeds every round."""
    default = dropout_seeds_by_round([], 4)
    assert all(len(set(seeds.tolist())) == len(seeds) for seeds in default)
    assert len({tuple(seeds.tolist()) for seeds in default}) == 4
    shared = dropout_seeds_by_round(["fl.dropout_masks=shared", "fl.dropout_period=3"], 4)
    assert all(len(set(seeds.tolist())) == 1 for seeds in shared)
    assert [int(seeds[0]) for seeds in shared[:3]] == [int(shared[0][0])] * 3
    assert int(shared[3][0]) != int(shared[0][0])
    held = dropout_seeds_by_round(["fl.dropout_period=2"], 3)
    assert torch.equal(held[0], held[1]) and not torch.equal(held[1], held[2])
    assert len(set(held[0].tolist())) == len(held[0])


def test_shared_dropout_masks_train_as_the_loop_with_one_seed():
    """The engine's rows with shared masks equal the per-client reference loop given one seed
    for every client; a model without dropout refuses the option."""
    from robustfl.models import karimireddy_cnn
    from robustfl.reference import train_clients_loop
    from robustfl.training import sample_batch_indices

    overrides = [*FAST, "model=karimireddy_cnn", "threads=1", "fl.dropout_masks=shared"]
    sim = build(compose_config([*overrides, "attack=none"]))
    start = sim.global_params.clone()
    batches_state = sim.streams["batches"].get_state()
    run_round(sim, 0, Stopwatch({}))
    clients = torch.arange(10)
    sim.streams["batches"].set_state(batches_state)
    batches = sample_batch_indices(
        sim.data, clients, sim.local_steps, sim.batch_size, sim.streams["batches"]
    )
    seeds = sim.dropout_seeds.draw(sim.trainer.dropout, clients, 10, 0, sim.streams["dropout"])
    assert len(set(seeds.tolist())) == 1
    model = karimireddy_cnn(tuple(sim.data.x.shape[1:]), 10)
    expected = train_clients_loop(
        model,
        sim.trainer.layout,
        start,
        sim.data.x,
        sim.data.y,
        batches,
        sim.trainer.lr,
        dropout_seeds=seeds,
    )
    torch.testing.assert_close(sim.updates, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="fl.dropout_masks=shared"):
        build(compose_config([*FAST, "fl.dropout_masks=shared"]))
