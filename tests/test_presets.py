"""Experiment presets compose; reduced versions of the reproduction presets show the
qualitative orderings of the papers (slow)."""

from __future__ import annotations

import pytest
from conftest import SHARED_MNIST
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from robustfl.api import compose_config, run_experiment
from robustfl.config import register_configs


def sweep_params(preset: str) -> dict:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustfl.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


@pytest.mark.parametrize(
    "preset",
    [
        "grid",
        "heterogeneity",
        "bucketing_mimic",
        "bucketing_momentum",
        "byzfl_heatmap",
        "privacy_tradeoff",
        "compression_tradeoff",
    ],
)
def test_presets_compose_and_sweep(preset):
    params = sweep_params(preset)
    assert params
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.fl.rounds > 0


def test_byzfl_preset_counts_honest_plus_byzantine():
    cfg = compose_config(["experiment=byzfl_heatmap", "fl.num_byzantine=3"])
    assert cfg.fl.num_clients == 13
    assert list(cfg.pre) == ["clipping", "nnm"] and cfg.pre.nnm.f == 3 and cfg.pre.clipping.c == 2


def test_momentum_preset_follows_the_authors_code():
    cfg = compose_config(["experiment=bucketing_momentum", "defense=cclip"])
    assert cfg.fl.momentum == 0.9 and cfg.fl.dampening == 0.0 and not cfg.fl.byzantine_momentum
    assert cfg.defense.tau == pytest.approx(100.0)  # 10 / (1 - 0.9), their linear scaling
    assert cfg.attack.z_formula == "bucketing"
    model = compose_config(["experiment=bucketing_momentum", "model=karimireddy_cnn"]).model
    assert model.name == "karimireddy_cnn"  # the preset sets no MLP-only keys


@pytest.mark.parametrize("preset", ["bucketing_mimic", "bucketing_momentum"])
def test_karimireddy_presets_score_krum_as_the_authors_code(preset):
    defenses = sweep_params(preset)["defense"].split(",")
    assert "krum_karimireddy" in defenses and "krum" not in defenses
    assert compose_config(["defense=krum_karimireddy"]).defense.distance_power == 4


def last5_accuracy(overrides: list[str], tmp_path) -> float:
    """The mean of the last 5 evaluations of one run (the bucketing paper's score)."""
    run_dir = tmp_path / "_".join(overrides[-2:]).replace("/", "")
    return run_experiment(overrides, run_dir)["final"]["accuracy_last5_mean"]


needs_mnist = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST files absent")


@pytest.mark.slow
@needs_mnist
def test_bucketing_mimic_reduced_orderings(tmp_path):
    """Non-IID mimic: Krum and median fall clearly below the mean; bucketing helps Krum."""
    base = [
        "experiment=bucketing_mimic",
        f"dataset.root={SHARED_MNIST}",
        "partition=label_sorted",
        "fl.rounds=300",
        "fl.eval_every=50",
        "seed=0",
    ]

    def accuracy(*extra):
        return last5_accuracy([*base, *extra], tmp_path)

    mean, krum, median = (
        accuracy("defense=mean"),
        accuracy("defense=krum"),
        accuracy("defense=median"),
    )
    krum_bucketed = accuracy("defense=krum", "pre=[bucketing]")
    assert krum < mean - 0.1 and median < mean - 0.05
    assert krum_bucketed > krum


@pytest.mark.slow
@needs_mnist
def test_byzfl_heatmap_reduced_orderings(tmp_path):
    """IID data keeps NNM + trimmed mean high; sorted data with f = 4 breaks it."""
    base = [
        "experiment=byzfl_heatmap",
        f"dataset.root={SHARED_MNIST}",
        "fl.rounds=200",
        "fl.eval_every=50",
        "defense=trimmed_mean",
    ]

    def worst(gamma, f):
        return min(
            run_experiment(
                [*base, f"partition.gamma={gamma}", f"fl.num_byzantine={f}", f"attack={a}"],
                tmp_path / f"{gamma}_{f}_{a}",
            )["best"]["accuracy"]
            for a in ("sign_flip_mean", "optimal_ipm", "optimal_alie")
        )

    assert worst(1.0, 1) > 0.85
    assert worst(0.0, 4) < worst(1.0, 1) - 0.2


@pytest.mark.slow
@needs_mnist
def test_bucketing_momentum_reduced_orderings(tmp_path):
    """Label flipping with worker momentum: Krum follows the flipped gradients, CM sits in
    between, RFA and CClip hold; bucketing lifts Krum (the authors' logs: 1.0, 50.6, 95.8,
    97.6; Krum 43.3 with bucketing)."""
    base = [
        "experiment=bucketing_momentum",
        f"dataset.root={SHARED_MNIST}",
        "attack=label_flip",
        "fl.rounds=300",
        "seed=0",
    ]

    def accuracy(*extra):
        return last5_accuracy([*base, *extra], tmp_path)

    krum, median, rfa, cclip = (
        accuracy(f"defense={d}") for d in ("krum", "median", "rfa", "cclip")
    )
    assert krum < 0.1 < median < rfa - 0.2 and rfa < cclip
    assert accuracy("defense=krum", "pre=[bucketing]") > krum + 0.2
