"""Attacks and defenses in real runs on the default data (digits)."""

from __future__ import annotations

import pytest

from robustfl.api import run_experiment

BASE = ["fl.num_byzantine=6", "fl.rounds=20", "fl.eval_every=10", "progress=false"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Final accuracy without attack, per defense."""
    cache = {}

    def get(defense, *extra):
        key = (defense, *extra)
        if key not in cache:
            out = tmp_path_factory.mktemp("baseline")
            cache[key] = run_experiment([*BASE, "attack=none", f"defense={defense}", *extra], out)[
                "final"
            ]["accuracy"]
        return cache[key]

    return get


# Attacks aimed at the plain mean, with their default parameters, except IPM: its paper
# default (epsilon = 0.1) targets Krum and median and cannot reverse the mean (it needs
# epsilon > h / f), so against the mean it runs with epsilon = 10.
MEAN_ATTACKS = [
    ["attack=sign_flip"],
    ["attack=gaussian"],
    ["attack=label_flip"],
    ["attack=minmax"],
    ["attack=fang"],
    ["attack=adaptive"],
    ["attack=ipm", "attack.epsilon=10"],
    ["attack=minsum"],
]


@pytest.mark.parametrize("attack", MEAN_ATTACKS, ids=lambda a: a[0])
def test_model_poisoning_lowers_accuracy_of_the_mean(tmp_path, baseline, attack):
    summary = run_experiment([*BASE, *attack, "defense=mean"], tmp_path)
    assert summary["final"]["accuracy"] < baseline("mean") - 0.02


@pytest.mark.parametrize(
    ("attack", "defense", "extra"),
    [
        ("fang_krum", "krum", []),
        ("mimic", "median", ["partition=shards"]),
        ("ipm", "median", []),
    ],
)
def test_attacks_aimed_at_robust_rules_hurt_them(tmp_path, baseline, attack, defense, extra):
    summary = run_experiment([*BASE, f"attack={attack}", f"defense={defense}", *extra], tmp_path)
    assert summary["final"]["accuracy"] < baseline(defense, *extra) - 0.02


def test_backdoor_raises_asr_while_clean_accuracy_stays_high(tmp_path, baseline):
    attacked = run_experiment([*BASE, "attack=backdoor", "defense=mean"], tmp_path / "a")
    assert attacked["final"]["asr"] > 0.5
    assert attacked["final"]["accuracy"] > baseline("mean") - 0.05
    # The trigger means nothing to a model trained without it.
    clean = run_experiment(
        [*BASE, "attack=backdoor", "attack.fraction=0.01", "fl.num_byzantine=1", "defense=median"],
        tmp_path / "b",
    )
    assert clean["final"]["asr"] < 0.2


ROBUST = [
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geomed",
    "centered_clipping",
    "norm_bound",
    "dnc",
    "fltrust",
]


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("defense", ROBUST)
def test_nonfinite_rows_do_not_hurt_robust_rules(tmp_path, baseline, defense, value):
    summary = run_experiment(
        [*BASE, "attack=nonfinite", f"attack.value='{value}'", f"defense={defense}"], tmp_path
    )
    assert summary["status"] == "completed"
    assert summary["final"]["accuracy"] > baseline(defense) - 0.03


def test_nonfinite_rows_against_bulyan(tmp_path):
    overrides = [
        "fl.num_byzantine=3",
        "fl.rounds=20",
        "fl.eval_every=10",
        "progress=false",
        "defense=bulyan",
    ]
    clean = run_experiment([*overrides, "attack=none"], tmp_path / "a")
    attacked = run_experiment([*overrides, "attack=nonfinite"], tmp_path / "b")
    assert attacked["status"] == "completed"
    assert attacked["final"]["accuracy"] > clean["final"]["accuracy"] - 0.03


def test_pre_aggregators_compose_from_the_config(tmp_path):
    summary = run_experiment(
        [
            *BASE,
            "fl.num_byzantine=3",
            "attack=alie",
            "defense=trimmed_mean",
            "pre=[nnm,bucketing]",
        ],
        tmp_path,
    )
    assert summary["status"] == "completed" and summary["final"]["accuracy"] > 0.8
