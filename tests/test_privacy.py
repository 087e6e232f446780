"""Client-level differential privacy: the Gaussian mechanism's clipping and noise against their
definitions, the accountant against the library's own example, both placements in the
engine, and resuming with privacy and compression state."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from conftest import FAST, Stop, StopAfter
from dp_accounting.rdp import RdpAccountant

from robustfl.api import compose_config, run_experiment
from robustfl.build import build
from robustfl.engine import Stopwatch, run_round
from robustfl.errors import ConfigError
from robustfl.privacy import Privacy, PrivacyAccountant, gaussian_mechanism_, noised_aggregate
from robustfl.results import read_metrics


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_clipping_scales_long_rows_to_the_norm_and_keeps_short_ones():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [math.inf, 1.0]])
    out = gaussian_mechanism_(rows.clone(), clip=1.0, noise_multiplier=0.0, generator=generator())
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_local_noise_has_standard_deviation_sigma_times_clip():
    rows = torch.zeros(4, 250_000)
    out = gaussian_mechanism_(rows, clip=0.5, noise_multiplier=2.0, generator=generator())
    # one million N(0, 1) draws: the sample std is within 0.5 % of 1 by far
    assert abs(float(out.std()) - 1.0) < 0.005
    assert abs(float(out.mean())) < 0.005


def test_central_noise_is_sigma_clip_over_the_rows():
    out = noised_aggregate(
        torch.zeros(1_000_000), rows=8, clip=2.0, noise_multiplier=4.0, generator=generator()
    )
    assert abs(float(out.std()) - 1.0) < 0.005


def test_epsilon_matches_the_library_example():
    """dp_accounting's own test: one Gaussian mechanism of noise multiplier 4.530877117 is
    exactly (1, 1e-6)-DP."""
    accountant = PrivacyAccountant("local", 4.530877117, 1e-6, rate=1.0)
    assert accountant.epsilon(1) == pytest.approx(1.0, abs=1e-6)


def test_epsilon_composes_and_sampling_amplifies_only_centrally():
    local = PrivacyAccountant("local", 1.0, 1e-5, rate=0.1)
    central = PrivacyAccountant("central", 1.0, 1e-5, rate=0.1)
    expected = RdpAccountant()
    expected.compose(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 50
    )
    assert central.epsilon(50) == pytest.approx(expected.get_epsilon(1e-5))
    assert central.epsilon(50) < local.epsilon(50)  # the server sees who sends, centrally not
    assert local.epsilon(10) < local.epsilon(50)
    assert PrivacyAccountant("local", 0.0, 1e-5, 1.0).epsilon(1) == math.inf
    assert local.epsilon(0) == 0.0


def recorded(sim):
    """Run one round of ``sim``; return the matrix its defense aggregated and the model's step."""
    seen = []
    rule = sim.defense

    class Recording(type(rule)):
        def __call__(self, updates):
            seen.append(updates.clone())
            return super().__call__(updates)

    rule.__class__ = Recording
    before = sim.global_params.clone()
    run_round(sim, 0, Stopwatch({}))
    return seen[0], sim.global_params - before


def test_local_placement_clips_every_honest_message():
    sim = build(
        compose_config([*FAST, "privacy=local", "privacy.clip=0.05", "privacy.noise_multiplier=0"])
    )
    rows, _ = recorded(sim)
    norms = torch.linalg.vector_norm(rows, dim=1)
    assert bool((norms <= 0.05 * (1 + 1e-5)).all())
    assert bool((norms >= 0.05 * (1 - 1e-5)).all())  # every raw update is longer than 0.05


def test_local_placement_noise_reaches_the_server():
    quiet = build(
        compose_config([*FAST, "privacy=local", "privacy.clip=0.05", "privacy.noise_multiplier=0"])
    )
    noisy = build(
        compose_config([*FAST, "privacy=local", "privacy.clip=0.05", "privacy.noise_multiplier=3"])
    )
    quiet_rows, _ = recorded(quiet)
    noisy_rows, _ = recorded(noisy)
    # same seed, same batches: the difference is the noise, std 3 * 0.05 per coordinate
    assert abs(float((noisy_rows - quiet_rows).std()) - 0.15) < 0.005


def test_central_placement_clips_at_the_server_and_noises_the_aggregate():
    base = [*FAST, "privacy=central", "privacy.clip=0.05", "fl.server_lr=1"]
    quiet = build(compose_config([*base, "privacy.noise_multiplier=0"]))
    noisy = build(compose_config([*base, "privacy.noise_multiplier=3"]))
    rows, quiet_step = recorded(quiet)
    noisy_rows, noisy_step = recorded(noisy)
    assert bool((torch.linalg.vector_norm(rows, dim=1) <= 0.05 * (1 + 1e-5)).all())
    torch.testing.assert_close(noisy_rows, rows)  # clients send no noise centrally
    # the aggregate of 10 rows gets noise of std 3 * 0.05 / 10
    assert abs(float((noisy_step - quiet_step).std()) / 0.015 - 1) < 0.02


def test_logged_epsilon_follows_the_most_frequent_participant(run_dir):
    overrides = [
        *FAST,
        "fl.clients_per_round=5",
        "fl.rounds=6",
        "privacy=local",
        "privacy.noise_multiplier=2",
    ]
    run_experiment(overrides, run_dir)
    sim = build(compose_config(overrides))
    for r in range(6):
        run_round(sim, r, Stopwatch({}))
    most = int(sim.privacy.participations.max())
    assert 3 <= most <= 6 and int(sim.privacy.participations.sum()) == 30
    expected = PrivacyAccountant("local", 2.0, 1e-5, 0.5).epsilon(most)
    assert read_metrics(run_dir)[-1]["epsilon"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"placement": "global"}, "privacy.placement='global'"),
        ({"placement": "local", "clip": 0.0}, "privacy.clip=0.0"),
        ({"placement": "local", "clip": None}, "privacy.clip=None"),
        (
            {"placement": "central", "clip": 1.0, "noise_multiplier": -1},
            "privacy.noise_multiplier=-1",
        ),
        ({"placement": "local", "clip": 1.0, "delta": 1.0}, "privacy.delta=1.0"),
    ],
)
def test_invalid_settings_name_the_parameter(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        Privacy(**kwargs)


def test_resume_with_privacy_and_compression_state_gives_identical_metrics(tmp_path):
    overrides = [
        *FAST,
        "fl.rounds=12",
        "fl.eval_every=1",
        "fl.clients_per_round=7",
        "privacy=local",
        "privacy.clip=0.1",
        "privacy.noise_multiplier=0.3",
        "compression=top_k",
        "compression.ratio=0.05",
        "threads=1",
        "checkpoint_every=1",  # the stop lands after a checkpoint: resumption is exercised
    ]
    run_experiment(overrides, tmp_path / "reference")
    with pytest.raises(Stop):
        run_experiment(overrides, tmp_path / "killed", tracker=StopAfter(5))
    assert len(read_metrics(tmp_path / "killed")) == 5
    run_experiment([*overrides, "resume=true"], tmp_path / "killed")

    def numbers(folder):
        return [
            {k: v for k, v in r.items() if not k.startswith(("time_", "elapsed"))}
            for r in read_metrics(folder)
        ]

    assert numbers(tmp_path / "killed") == numbers(tmp_path / "reference")
