"""Rules and pre-aggregators on the inputs attackers choose: a Byzantine centre for the
distance computations, magnitudes near float32's limits, zero server updates, non-finite
rows chosen by Multi-Krum, ties that depend on the clients' order; then a property sweep
(hypothesis) of every shipped rule over the hostile families. References are independent
float64 loops (``reference_rules.py``) or properties the rules state."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import reference_rules as ref
import torch
from conftest import pre_nodes
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.bulyan import bulyan
from defenses.dnc import dnc
from defenses.fltrust import fltrust
from defenses.geomed import geometric_median
from defenses.krum import krum
from defenses.meamed import mean_around_median
from defenses.multi_krum import multi_krum
from defenses.nnm import nearest_neighbor_mixing
from robustfl.build import build_defense
from robustfl.errors import ConfigError
from robustfl.linalg import median_norm_row, pairwise_sq_distances, row_norms


def weiszfeld64(rows: np.ndarray, iterations: int = 2000) -> np.ndarray:
    """The geometric median by plain Weiszfeld steps on the rows, in float64."""
    v = rows.mean(axis=0)
    for _ in range(iterations):
        dist = np.maximum(np.linalg.norm(rows - v, axis=1), 1e-300)
        v = (rows / dist[:, None]).sum(axis=0) / (1 / dist).sum()
    return v


def byzantine_centre_rows(seed: int) -> torch.Tensor | None:
    """The issue's case: 9 honest rows 1e4 + 1e-2 N(0, 1) (d = 20) and 2 Byzantine rows
    -mu / |mu| times the honest median norm; ``None`` unless, after rounding to float32, the
    row of median norm (the first centre of the distance computation) is Byzantine."""
    rng = np.random.default_rng(seed)
    honest = 1e4 + 1e-2 * rng.standard_normal((9, 20))
    mu = honest.mean(axis=0)
    norm = np.median(np.linalg.norm(honest, axis=1))
    byzantine = np.tile(-mu / np.linalg.norm(mu) * norm, (2, 1))
    rows = torch.from_numpy(np.concatenate([byzantine, honest]).astype(np.float32))
    centre = median_norm_row(row_norms(rows), torch.ones(11, dtype=torch.bool))
    return rows if centre in (0, 1) else None


BYZANTINE_CENTRE_CASES = [
    rows for seed in range(100) if (rows := byzantine_centre_rows(seed)) is not None
]


@pytest.mark.parametrize("case", range(5))
def test_distances_stay_exact_when_the_row_of_median_norm_is_byzantine(case):
    rows = BYZANTINE_CENTRE_CASES[case]
    exact = rows.double()
    want = torch.cdist(exact[2:], exact[2:]) ** 2
    got = pairwise_sq_distances(rows)[2:, 2:]
    assert float((got - want).abs().max()) < 1e-3 * float(want.max())  # true max is ~7e-3
    listed = exact.tolist()
    assert krum(rows, 2)[1] == ref.krum_index(listed, 2)
    assert bulyan(rows, 2)[1].tolist() == ref.bulyan(listed, 2)[1]
    assert multi_krum(rows, 2)[1].tolist() == ref.multi_krum(listed, 2, 9)[1]
    median64 = weiszfeld64(exact.numpy())
    geomed, _ = geometric_median(rows, iterations=1000, tol=0.0)
    assert float((geomed.double() - torch.from_numpy(median64)).abs().max()) < 2e-3


@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_rows_near_float32_limits_behave_as_at_unit_scale(magnitude):
    """All rows scaled by 1e30 or 1e-30: selections equal the float64 reference's, outputs are
    finite and equal the unit-scale outputs times the scale (rules commute with scaling)."""
    rng = np.random.default_rng(7)
    unit = rng.standard_normal((11, 6))
    unit[:2] += 4.0
    rows = torch.from_numpy((unit * magnitude).astype(np.float32))
    listed = (unit * magnitude).tolist()
    assert krum(rows, 2)[1] == ref.krum_index(listed, 2)
    out, chosen = multi_krum(rows, 2)
    assert chosen.tolist() == ref.multi_krum(listed, 2, 9)[1]
    assert torch.isfinite(out).all()
    assert bulyan(rows, 2)[1].tolist() == ref.bulyan(listed, 2)[1]
    torch.testing.assert_close(
        nearest_neighbor_mixing(rows, 2).double() / magnitude,
        torch.tensor(ref.nnm(unit.tolist(), 2)),
        rtol=1e-4,
        atol=1e-5,
    )
    # nu is in update units: scaled with the rows, the smoothing stays negligible
    geomed, _ = geometric_median(rows, nu=1e-6 * magnitude, iterations=1000, tol=0.0)
    np.testing.assert_allclose(geomed.double().numpy() / magnitude, weiszfeld64(unit), atol=1e-4)
    out, kept = dnc(rows, 2)
    assert torch.isfinite(out).all() and set(kept.tolist()).isdisjoint({0, 1})
    for pre in ({"nnm": {"f": 2}}, {"bucketing": {"s": 2}}):
        rule = build_defense({"_target_": "defenses.median.Median"}, pre_nodes(**pre))
        rule.set_generator(torch.Generator().manual_seed(0))
        assert torch.isfinite(rule(rows)).all(), pre


def test_dnc_without_a_usable_row_returns_nan_and_keeps_nothing():
    out, kept = dnc(torch.full((5, 3), math.nan), 1)
    assert torch.isnan(out).all() and kept.numel() == 0


@pytest.mark.parametrize("server", [0.0, 1e-30, 1e-45])
def test_fltrust_scores_a_zero_row_zero_whatever_the_server_update(server):
    updates = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
    out, scores = fltrust(updates, torch.tensor([server, server]))
    assert torch.isfinite(out).all() and torch.isfinite(scores).all()
    assert float(scores[0]) == 0.0
    if server == 1e-30:  # a tiny but valid server update keeps its direction
        assert scores.tolist()[1] == pytest.approx(3 / math.sqrt(2 * 5))
        assert float(torch.linalg.vector_norm(out.double())) == pytest.approx(
            1e-30 * math.sqrt(2), rel=1e-5
        )


def test_fltrust_rows_of_1e30_keep_their_trust_scores():
    base = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, 1.0]])
    _, unit_scores = fltrust(base, torch.tensor([1.0, 1.0]))
    _, scores = fltrust(base * 1e30, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(scores, unit_scores)


def test_multi_krum_beyond_n_minus_f_does_not_average_a_nonfinite_row_as_zero():
    rows = torch.cat([torch.ones(6, 3), torch.full((1, 3), math.nan)])
    out, chosen = multi_krum(rows, f=1, m=7)
    assert 6 in chosen.tolist() and not torch.isfinite(out).all()
    out, chosen = multi_krum(rows, f=1)  # m = n - f leaves it out
    assert 6 not in chosen.tolist() and torch.equal(out, torch.ones(3))


def test_bulyan_at_n_4f_plus_3_does_not_depend_on_the_clients_order():
    """f = 1, n = 7: the last of the five passes scores no neighbour, so every remaining row
    ties; the result must not change when the clients are listed in another order."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        rows = torch.from_numpy(rng.standard_normal((7, 4)).astype(np.float32))
        out, chosen = bulyan(rows, 1)
        order = torch.from_numpy(rng.permutation(7))
        out_perm, chosen_perm = bulyan(rows[order], 1)
        torch.testing.assert_close(out_perm, out)
        assert sorted(order[chosen_perm].tolist()) == chosen.tolist()


def test_bucketing_error_quotes_the_clients_needed_before_bucketing():
    rule = build_defense({"_target_": "defenses.krum.Krum", "f": 2}, pre_nodes(bucketing={"s": 2}))
    rule.check(14)  # 7 buckets, Krum's minimum for f = 2
    with pytest.raises(ConfigError) as error:
        rule.check(12)  # 6 buckets
    message = str(error.value)
    assert "fl.clients_per_round to at least 13" in message and "6 rows" in message


def test_trimmed_mean_with_an_explicit_b_advises_lowering_b():
    rule = build_defense({"_target_": "defenses.trimmed_mean.TrimmedMean", "f": 1, "b": 3})
    with pytest.raises(ConfigError, match=r"defense\.b") as error:
        rule.check(6)
    assert "defense.f" not in str(error.value)


# --------------------------------------------------------------------------- the sweep

N_F = 3  # the sweep's assumed number of Byzantine clients

RULES = {
    "mean": ({"_target_": "defenses.mean.Mean"}, None),
    "median": ({"_target_": "defenses.median.Median"}, None),
    "trimmed_mean": ({"_target_": "defenses.trimmed_mean.TrimmedMean", "f": N_F}, None),
    "meamed": ({"_target_": "defenses.meamed.MeaMed", "f": N_F}, None),
    "krum": ({"_target_": "defenses.krum.Krum", "f": N_F}, None),
    "multi_krum": ({"_target_": "defenses.multi_krum.MultiKrum", "f": N_F}, None),
    "bulyan": ({"_target_": "defenses.bulyan.Bulyan", "f": N_F}, None),
    "geomed": ({"_target_": "defenses.geomed.GeometricMedian"}, None),
    "dnc": ({"_target_": "defenses.dnc.DnC", "f": N_F}, None),
    "centered_clipping": ({"_target_": "defenses.centered_clipping.CenteredClipping"}, None),
    "norm_bound": ({"_target_": "defenses.norm_bound.NormBound"}, None),
    "foolsgold": ({"_target_": "defenses.foolsgold.FoolsGold"}, None),
    "fltrust": ({"_target_": "defenses.fltrust.FLTrust"}, None),
    "majority_vote": ({"_target_": "defenses.majority_vote.MajorityVote", "step": 0.5}, None),
    "nnm+median": ({"_target_": "defenses.median.Median"}, {"nnm": {"f": N_F}}),
    "bucketing+median": ({"_target_": "defenses.median.Median"}, {"bucketing": {"s": 2}}),
    "arc+mean": ({"_target_": "defenses.mean.Mean"}, {"clipping": {"adaptive": True, "f": N_F}}),
    "clipping+median": ({"_target_": "defenses.median.Median"}, {"clipping": {"c": 1.0}}),
}
#: Rules whose output stays inside the per-coordinate range of the honest rows, whatever
#: f rows send (MeaMed, Krum and Bulyan can follow f identical rows just outside it).
INSIDE_HONEST_RANGE = {"median", "trimmed_mean"}
#: Rules that commute with scaling by a power of two (no threshold or smoothing in update
#: units, such as clipping radii or the geometric median's nu).
SCALE_FREE = {"mean", "median", "trimmed_mean", "meamed", "krum", "multi_krum", "bulyan", "dnc"}
SCALE_FREE |= {"nnm+median", "bucketing+median"}
#: Rules whose output is finite with up to f non-finite rows among n >= their minimum
#: (bucketing spreads f bad rows over up to f of its n / s buckets, so it needs more rows).
DROP_NONFINITE = SCALE_FREE - {"mean", "bucketing+median"}
DROP_NONFINITE |= {"geomed", "centered_clipping", "norm_bound", "arc+mean", "fltrust"}
DROP_NONFINITE |= {"majority_vote"}
FAMILIES = ["gaussian", "identical", "f_identical", "offset", "huge", "tiny", "nonfinite", "zeros"]


def minimum_rows(name: str) -> int:
    """The smallest n each rule allows for f = N_F (2f + 1 for the rest, to keep a majority)."""
    return {"bulyan": 4 * N_F + 3, "krum": 2 * N_F + 3, "multi_krum": 2 * N_F + 3}.get(
        name, 2 * N_F + 1
    )


def hostile(family: str, n: int, d: int, seed: int) -> tuple[np.ndarray, int]:
    """``(n, d)`` float64 rows of one family and the number of honest rows (listed first)."""
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((n, d))
    if family == "identical":
        return np.tile(honest[:1], (n, 1)), n
    if family == "f_identical":  # what ALIE, IPM and mimic send: f copies of one row
        honest[n - N_F :] = honest[:-N_F].mean(axis=0) - 1.5 * honest[:-N_F].std(axis=0)
        return honest, n - N_F
    if family == "offset":  # late training: a large common part, a tiny spread
        return 1e4 + 1e-2 * honest, n
    if family == "huge":
        return 1e30 * honest, n
    if family == "tiny":
        return 1e-30 * honest, n
    if family == "nonfinite":
        honest[n - N_F :] = rng.choice([math.nan, math.inf, -math.inf], (N_F, d))
        return honest, n - N_F
    if family == "zeros":
        return np.zeros((n, d)), n
    return honest, n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(RULES))
@settings(max_examples=6, deadline=None)
@given(
    extra=st.integers(0, 3),
    d=st.sampled_from([1, 2, 7]),
    seed=st.integers(0, 2**16),
)
def test_every_rule_on_hostile_families(name, family, extra, d, seed):
    n = minimum_rows(name) + extra
    rows64, honest = hostile(family, n, d, seed)
    rows = torch.from_numpy(rows64.astype(np.float32))
    target, pre = RULES[name]

    def run(x: torch.Tensor) -> torch.Tensor:
        rule = build_defense(dict(target), pre_nodes(**pre) if pre else None)
        rule.check(n)
        # FLTrust's server update: the honest rows' mean, a direction the server could learn
        server = torch.from_numpy(np.nan_to_num(rows64[:honest]).mean(axis=0).astype(np.float32))
        generator = torch.Generator().manual_seed(seed)
        context = SimpleNamespace(
            defense_generator=generator, server_update=lambda: server, client_ids=torch.arange(n)
        )
        rule.prepare(context)
        return rule(x.clone())

    out = run(rows)
    assert out.shape == (d,) and out.dtype == torch.float32
    good = rows64[:honest]
    if family != "nonfinite" or name in DROP_NONFINITE:
        assert torch.isfinite(out).all(), (name, family)
    if not torch.isfinite(out).all():
        return
    value = out.double().numpy()
    if name == "majority_vote":  # every coordinate a step up, down, or none (a tie)
        assert set(np.unique(value)) <= {-0.5, 0.0, 0.5}, value
    ulp = np.spacing(np.abs(value).astype(np.float32)).astype(np.float64)
    if name in INSIDE_HONEST_RANGE:
        low, high = good.min(axis=0), good.max(axis=0)
        assert (value >= low - ulp).all() and (value <= high + ulp).all(), (name, family)
    if family in ("identical", "zeros") and name in SCALE_FREE:
        np.testing.assert_allclose(value, rows64[0], rtol=1e-5, atol=1e-300)
    if name in SCALE_FREE and family in ("gaussian", "f_identical", "huge", "tiny"):
        powers = {"huge": (-100,), "tiny": (100,)}.get(family, (-100, 100))  # stay in range
        for power in powers:
            scaled = run(rows * 2.0**power).double().numpy() / 2.0**power
            np.testing.assert_allclose(scaled, value, rtol=2e-4, atol=1e-5 * np.abs(value).max())
    if family == "nonfinite":
        return
    listed = rows.double().tolist()
    spread = np.abs(good - good.mean(axis=0)).max()
    if name == "krum":  # exactly one of the rows: the reference's pick, or a copy of it
        np.testing.assert_array_equal(value, rows.double().numpy()[ref.krum_index(listed, N_F)])
    want = None
    if name == "multi_krum":
        want = ref.multi_krum(listed, N_F, n - N_F)[0]
    if name == "bulyan":
        want = ref.bulyan(listed, N_F)[0]
    if name == "meamed":
        want = [ref.nearest_to_median_mean([r[j] for r in listed], n - N_F) for j in range(d)]
    if want is not None:  # float32 rounding of the output, and of sums at the spread's scale
        tolerance = 4 * ulp + 1e-5 * spread
        assert (np.abs(value - np.asarray(want)) <= tolerance).all(), (name, family, value, want)


def late_training_rows(seed: int, n: int, d: int, identical: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = 50.0 + 1e-3 * rng.standard_normal((n, d))
    mu, sigma = rows[identical:].mean(axis=0), rows[identical:].std(axis=0)
    rows[:identical] = mu - sigma  # ALIE with z = 1, sent by every Byzantine client
    return torch.from_numpy(rows.astype(np.float32))


@pytest.mark.parametrize("seed", range(3))
def test_meamed_and_bulyan_equal_nearest_to_median_on_alie_and_late_training_rows(seed):
    """n = 16 with 3 identical rows and n = 23 (Bulyan, f = 5) with 5, on a large common part
    with a tiny spread: every coordinate equals the enumerated definition in float64."""
    rows = late_training_rows(seed, 16, 30, 3)
    got = mean_around_median(rows, 13).double().numpy()
    want = [ref.nearest_to_median_mean(rows[:, j].double().tolist(), 13) for j in range(30)]
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-6)  # float32: ulp(50) = 3.8e-6
    rows = late_training_rows(seed, 23, 30, 5)
    out, chosen = bulyan(rows, 5)
    want, want_chosen = ref.bulyan(rows.double().tolist(), 5)
    assert chosen.tolist() == want_chosen
    np.testing.assert_allclose(out.double().numpy(), want, rtol=0, atol=4e-6)
