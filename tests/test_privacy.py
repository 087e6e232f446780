"""Client-level differential privacy: the Gaussian mechanism's clipping and noise against their
definitions, the accountant against the library's own example, both placements in the
engine, and resuming with privacy and compression state."""

from __future__ import annotations

import logging
import math

import dp_accounting
import pandas as pd
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
    exactly (1, 1e-6)-DP under add-or-remove-one (central, every client every round)."""
    accountant = PrivacyAccountant("central", 4.530877117, 1e-6, 10, 10, "poisson")
    assert accountant.epsilon(1) == pytest.approx(1.0, abs=1e-6)


def direct_epsilon(event, releases, accountant="rdp", replace_one=False, delta=1e-5):
    """Epsilon from dp_accounting, spelled out independently of robustfl.privacy."""
    from dp_accounting.pld import PLDAccountant

    relation = dp_accounting.NeighboringRelation
    relation = relation.REPLACE_ONE if replace_one else relation.ADD_OR_REMOVE_ONE
    kind = RdpAccountant if accountant == "rdp" else PLDAccountant
    account = kind(neighboring_relation=relation)
    account.compose(event, releases)
    return account.get_epsilon(delta)


def test_the_issues_figures_for_each_sampling_and_placement():
    """50 clients, 5 a round, sigma 1, delta 1e-5. Central: Poisson sampling, 100 rounds,
    add-or-remove: 7.90 (RDP), 7.05 (PLD); exactly 5 of 50 without replacement needs
    replace-one with the clipped sum's sensitivity 2C: 83.9 (RDP). Local, replace-one: 10.73
    (RDP) and 10.0 (PLD) after one release, 48.8 and 46.2 after ten."""
    gauss = dp_accounting.GaussianDpEvent
    poisson = PrivacyAccountant("central", 1.0, 1e-5, 50, 5, "poisson")
    want = direct_epsilon(dp_accounting.PoissonSampledDpEvent(0.1, gauss(1.0)), 100)
    assert poisson.epsilon(100) == pytest.approx(want) and want == pytest.approx(7.90, abs=0.01)
    pld = PrivacyAccountant("central", 1.0, 1e-5, 50, 5, "poisson", "pld")
    want = direct_epsilon(dp_accounting.PoissonSampledDpEvent(0.1, gauss(1.0)), 100, "pld")
    assert pld.epsilon(100) == pytest.approx(want) and want == pytest.approx(7.05, abs=0.01)
    fixed = PrivacyAccountant("central", 1.0, 1e-5, 50, 5, "fixed")
    event = dp_accounting.SampledWithoutReplacementDpEvent(50, 5, gauss(0.5))
    want = direct_epsilon(event, 100, replace_one=True)
    assert fixed.epsilon(100) == pytest.approx(want) and want == pytest.approx(83.9, abs=0.1)
    assert fixed.epsilon(100) >= poisson.epsilon(100)
    for kind, once, ten in (("rdp", 10.73, 48.8), ("pld", 10.0, 46.2)):
        local = PrivacyAccountant("local", 1.0, 1e-5, 50, 5, "fixed", kind)
        assert local.epsilon(1) == pytest.approx(once, abs=0.01)
        assert local.epsilon(10) == pytest.approx(ten, abs=0.1)
    assert PrivacyAccountant("local", 0.0, 1e-5, 50, 5).epsilon(1) == math.inf
    with pytest.raises(ConfigError, match="privacy.accountant=pld"):
        PrivacyAccountant("central", 1.0, 1e-5, 50, 5, "fixed", "pld")


@pytest.mark.parametrize(
    ("extra", "accountant"),
    [
        (["privacy=local"], "rdp"),
        (["privacy=local"], "pld"),
        (["privacy=central", "fl.clients_per_round=5"], "rdp"),  # Poisson, by default
        (["privacy=central", "fl.clients_per_round=5"], "pld"),
        (["privacy=central", "fl.clients_per_round=5", "fl.sampling=fixed"], "rdp"),
    ],
)
def test_every_logged_epsilon_equals_dp_accounting_for_the_sampling_that_ran(
    tmp_path, extra, accountant
):
    overrides = [*FAST, "fl.eval_every=1", "privacy.noise_multiplier=1.5", *extra]
    summary = run_experiment([*overrides, f"privacy.accountant={accountant}"], tmp_path)
    gauss = dp_accounting.GaussianDpEvent
    central = "privacy=central" in extra
    sampling = summary["participants"]["sampling"]
    assert sampling == ("poisson" if central and "fl.sampling=fixed" not in extra else "fixed")
    for record in read_metrics(tmp_path):
        rounds = record["round"]
        if not central:  # every client every round (FAST): each honest client sent `rounds`
            sigma = 0.75 if accountant == "rdp" else 1.5  # RDP: sensitivity 2C spelled out
            want = direct_epsilon(gauss(sigma), rounds, accountant, replace_one=True)
        elif sampling == "poisson":
            event = dp_accounting.PoissonSampledDpEvent(0.5, gauss(1.5))
            want = direct_epsilon(event, rounds, accountant)
        else:
            event = dp_accounting.SampledWithoutReplacementDpEvent(10, 5, gauss(0.75))
            want = direct_epsilon(event, rounds, replace_one=True)
        assert record["epsilon"] == pytest.approx(want), (extra, accountant, rounds)
    assert summary["privacy_mechanism"]["accountant"].startswith(
        f"dp_accounting {accountant.upper()}"
    )


def test_poisson_rounds_vary_in_size_skip_what_the_rule_cannot_take_and_log_it(tmp_path):
    """Each of 10 clients with probability 0.7: rounds of about 4 to 10 clients; Krum needs
    n > 2f + 2 = 6, so smaller rounds are skipped (no update) and counted."""
    overrides = [*FAST, "fl.clients_per_round=7", "fl.sampling=poisson", "fl.rounds=30"]
    summary = run_experiment([*overrides, "fl.eval_every=1", "defense=krum"], tmp_path)
    records = read_metrics(tmp_path)
    sizes = [r["participants"] for r in records]
    assert len(set(sizes)) > 2 and summary["participants"]["sampling"] == "poisson"
    skipped = sum(size < 7 for size in sizes)
    assert summary["rounds_skipped"] == skipped == records[-1]["rounds_skipped"] > 0
    assert summary["status"] == "completed"


def test_central_dp_with_poisson_sampling_divides_by_the_expected_round_size():
    """DP-FedAvg: the noised sum of the clipped rows over the fixed q N, not over the round's
    own count (which would reveal it)."""
    base = [*FAST, "privacy=central", "privacy.clip=0.05", "privacy.noise_multiplier=0"]
    sim = build(compose_config([*base, "fl.clients_per_round=5", "fl.server_lr=1"]))
    assert sim.federation.sampling == "poisson"
    rows, step = recorded(sim)
    torch.testing.assert_close(step, rows.sum(dim=0) / 5.0)  # q N = 0.5 * 10


def test_byzantine_messages_leave_without_the_honest_mechanism_unless_enforced():
    """A backdoor boosted 20 times under local DP with clip 0.1: its messages are not clipped
    (an attacker applies no mechanism that limits it) unless the protocol enforces the
    norm; the honest ones are; only honest releases count for epsilon."""
    base = [*FAST, "privacy=local", "privacy.clip=0.1", "privacy.noise_multiplier=0"]
    base += ["attack=backdoor", "attack.boost=20"]
    for enforced in (False, True):
        sim = build(compose_config([*base, f"privacy.enforced={enforced}"]))
        rows, _ = recorded(sim)
        norms = torch.linalg.vector_norm(rows, dim=1)
        byzantine = sim.federation.is_byzantine
        assert bool((norms[~byzantine] <= 0.1 * (1 + 1e-5)).all())
        if enforced:
            assert bool((norms[byzantine] <= 0.1 * (1 + 1e-5)).all())
        else:
            assert bool((norms[byzantine] > 1.0).all())
        assert int(sim.privacy.participations[byzantine].sum()) == 0


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
    # attack=none: the Byzantine clients behave honestly, mechanism included, and count
    assert 3 <= most <= 6 and int(sim.privacy.participations.sum()) == 30
    expected = PrivacyAccountant("local", 2.0, 1e-5, 10, 5).epsilon(most)
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


def test_every_view_says_whether_the_epsilon_covers_the_rule(tmp_path):
    """Central DP bounds the mean of the clipped rows: the median's release is not covered;
    local DP covers any rule. The summary, results.csv and the page say so."""
    from robustfl.report import write_report

    base = [*FAST, "privacy.noise_multiplier=1", "fl.rounds=2"]
    runs = {
        "mean": ["privacy=central", "defense=mean"],
        "median": ["privacy=central", "defense=median"],
        "local": ["privacy=local", "defense=median"],
    }
    covers = {
        name: run_experiment([*base, *extra], tmp_path / "runs" / name)["privacy_mechanism"]
        for name, extra in runs.items()
    }
    assert covers["mean"]["epsilon_covers_rule"] is True
    assert covers["median"]["epsilon_covers_rule"] is False
    assert covers["median"]["scope"].startswith("not covered")
    assert covers["local"]["epsilon_covers_rule"] is True
    page = write_report([tmp_path / "runs"], tmp_path / "out").read_text()
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(frame["epsilon_covers_rule"]) == {True, False}
    assert "this epsilon does not cover median" in page


def test_robustness_error_compares_with_the_honest_messages_the_rule_receives(tmp_path):
    """Central DP, no attack, no noise: the mean of the clipped rows is exactly the mean of
    the honest messages the rule receives, so the error is 0 however hard the clipping (it
    measured the clipping itself, 0.77 at clip 0.05, when compared with unclipped updates)."""
    overrides = [*FAST, "privacy=central", "privacy.clip=0.05", "privacy.noise_multiplier=0"]
    summary = run_experiment([*overrides, "defense=mean", "fl.num_byzantine=0"], tmp_path)
    assert summary["worst_robustness_error"] < 1e-5


def test_a_delta_above_one_over_n_is_warned_about_and_accountant_noise_stays_out(caplog):
    privacy = Privacy("local", clip=1.0, noise_multiplier=1.0, delta=0.2)
    with caplog.at_level(logging.WARNING):
        privacy.bind(10, 10)
        PrivacyAccountant("central", 1.0, 1e-5, 50, 5, "poisson").epsilon(100)
    messages = [record.getMessage() for record in caplog.records]
    assert any("privacy.delta=0.2 is not below 1 / fl.num_clients" in m for m in messages)
    assert not any("failed to converge" in m for m in messages)


def test_an_empty_poisson_round_under_central_dp_still_releases_its_noise():
    """No client drawn: the sum is 0, and DP-FedAvg still adds N(0, (sigma C / q N)^2)."""
    base = [*FAST, "privacy=central", "privacy.clip=0.5", "privacy.noise_multiplier=2"]
    sim = build(compose_config([*base, "fl.clients_per_round=1", "fl.server_lr=1"]))
    sim.federation.participants = lambda generator: torch.zeros(0, dtype=torch.long)
    before = sim.global_params.clone()
    result = run_round(sim, 0, Stopwatch({}))
    step = sim.global_params - before
    assert result.skipped == "no client drawn" and result.participants == 0
    assert abs(float(step.std()) / (2 * 0.5 / 1.0) - 1) < 0.05  # q N = 0.1 * 10 = 1


def test_the_central_poisson_account_agrees_with_opacus():
    """Where the assumptions coincide (Poisson-subsampled Gaussian, add-or-remove-one, RDP),
    Opacus' independent RDP analysis gives the same epsilon to within its coarser orders."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    for rate, sigma, rounds in ((0.1, 1.0, 100), (0.5, 1.5, 30), (0.05, 0.8, 500)):
        rdp = compute_rdp(q=rate, noise_multiplier=sigma, steps=rounds, orders=orders)
        opacus_epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
        ours = PrivacyAccountant("central", sigma, 1e-5, 100, round(rate * 100), "poisson")
        assert ours.epsilon(rounds) == pytest.approx(opacus_epsilon, rel=0.02)
