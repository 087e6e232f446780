"""Every attack against its definition on small hand-made matrices, with expected values
computed independently (numpy / scipy, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import pre_nodes
from scipy.stats import norm

from attacks.adaptive import Adaptive, grid_maximize, in_span_coordinates, line_maximize
from attacks.alie import ALIE, alie_z
from attacks.backdoor import Backdoor, stamp
from attacks.fang import Fang
from attacks.gaussian import Gaussian
from attacks.ipm import IPM
from attacks.label_flip import LabelFlip
from attacks.mimic import Mimic
from attacks.minmax import MinMax, halving_search
from attacks.minsum import MinSum
from attacks.nonfinite import NonFinite
from attacks.sign_flip import SignFlip
from defenses.centered_clipping import CenteredClipping
from defenses.krum import krum
from defenses.median import Median
from robustfl.build import build_defense
from robustfl.contracts import RoundContext
from robustfl.errors import ConfigError


def context(n, f, defense=None, seed=0, byzantine_rows=None):
    rows = torch.arange(n - f, n) if byzantine_rows is None else torch.tensor(byzantine_rows)
    return RoundContext(
        round=0,
        defense=defense,
        global_params=torch.zeros(1),
        generator=torch.Generator().manual_seed(seed),
        num_clients=n,
        num_byzantine=f,
        byzantine_rows=rows,
        sample_counts=torch.ones(n),
        client_ids=torch.arange(n),
    )


def matrices(seed=0, h=8, f=3, d=6):
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.5, 1.0, (h, d)).astype(np.float32)
    byz = rng.normal(0.5, 1.0, (f, d)).astype(np.float32)
    return torch.from_numpy(honest), torch.from_numpy(byz)


def test_sign_flip():
    honest, byz = matrices()
    out = SignFlip(scale=2.0).poison_gradients(honest, byz, context(11, 3))
    np.testing.assert_allclose(out.numpy(), -2.0 * byz.numpy())


def test_gaussian_is_seeded_noise_with_the_given_std():
    honest, _ = matrices()
    byz = torch.zeros(3, 20000)
    a = Gaussian(std=3.0).poison_gradients(honest, byz, context(11, 3, seed=1))
    b = Gaussian(std=3.0).poison_gradients(honest, byz, context(11, 3, seed=1))
    assert torch.equal(a, b)
    assert abs(float(a.std()) - 3.0) < 0.05 and abs(float(a.mean())) < 0.05


def test_label_flip_maps_y_to_c_minus_1_minus_y():
    attack = LabelFlip()
    attack.bind(10, (64,), 1.0)
    x, y = torch.zeros(4, 64), torch.tensor([0, 3, 9, 5])
    _, flipped = attack.poison_data(x, y, torch.Generator())
    assert flipped.tolist() == [9, 6, 0, 4]


@pytest.mark.parametrize(("n", "f"), [(20, 4), (25, 5), (50, 10), (11, 2)])
def test_alie_z_formulas(n, f):
    s = np.floor(n / 2 + 1) - f
    assert alie_z(n, f, "paper") == pytest.approx(norm.ppf((n - s) / n), abs=1e-9)
    assert alie_z(n, f, "bucketing") == pytest.approx(norm.ppf((n - f - s) / (n - f)), abs=1e-9)


def test_alie_z_known_value():
    assert alie_z(20, 4) == pytest.approx(0.38532, abs=1e-5)  # Phi^-1(13/20)


def test_alie_rows_are_mean_minus_z_std():
    honest, byz = matrices()
    out = ALIE().poison_gradients(honest, byz, context(11, 3))
    z = alie_z(11, 3)
    h = honest.numpy().astype(np.float64)
    expected = h.mean(0) - z * h.std(0, ddof=1)
    for row in out.numpy():
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    fixed = ALIE(z=1.5, unbiased=False).poison_gradients(honest, byz, context(11, 3))
    np.testing.assert_allclose(fixed[0].numpy(), h.mean(0) - 1.5 * h.std(0), rtol=1e-5, atol=1e-6)
    local = ALIE(knowledge="local").poison_gradients(honest, byz, context(11, 3))
    b = byz.numpy().astype(np.float64)
    np.testing.assert_allclose(
        local[0].numpy(), b.mean(0) - z * b.std(0, ddof=1), rtol=1e-5, atol=1e-6
    )


def test_alie_undefined_z_is_a_clear_error():
    with pytest.raises(ConfigError, match="set attack.z"):
        ALIE().check(4, 3)


def test_ipm():
    honest, byz = matrices()
    out = IPM(epsilon=0.5).poison_gradients(honest, byz, context(11, 3))
    np.testing.assert_allclose(out[1].numpy(), -0.5 * honest.numpy().mean(0), rtol=1e-5)


def loop_max_distance(point, rows):
    return max(np.sum((point - r) ** 2) for r in rows)


def loop_sum_distance(point, rows):
    return sum(np.sum((point - r) ** 2) for r in rows)


def honest_diameter(rows):
    return max(np.sum((a - b) ** 2) for a in rows for b in rows)


def honest_max_sum(rows):
    return max(sum(np.sum((a - b) ** 2) for b in rows) for a in rows)


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("search", ["halving", "exact"])
def test_minmax_gamma_is_the_largest_satisfying_the_constraint(perturbation, search):
    honest, byz = matrices(seed=3)
    attack = MinMax(perturbation=perturbation, search=search)
    out = attack.poison_gradients(honest, byz, context(11, 3))
    h = honest.numpy().astype(np.float64)
    bound = honest_diameter(h)
    mu = h.mean(0)
    p = (out[0].numpy().astype(np.float64) - mu) / attack.last_gamma
    gamma = attack.last_gamma
    assert gamma > 0.01
    assert loop_max_distance(mu + gamma * p, h) <= bound * (1 + 1e-6)
    assert loop_max_distance(mu + gamma * 1.001 * p, h) > bound
    assert torch.equal(out[0], out[2])


@pytest.mark.parametrize("search", ["halving", "exact"])
def test_minsum_gamma_is_the_largest_satisfying_the_constraint(search):
    honest, byz = matrices(seed=4)
    attack = MinSum(perturbation="std", search=search)
    out = attack.poison_gradients(honest, byz, context(11, 3))
    h = honest.numpy().astype(np.float64)
    mu = h.mean(0)
    gamma = attack.last_gamma
    p = (out[0].numpy().astype(np.float64) - mu) / gamma
    bound = honest_max_sum(h)
    assert loop_sum_distance(mu + gamma * p, h) <= bound * (1 + 1e-6)
    assert loop_sum_distance(mu + gamma * 1.001 * p, h) > bound


def test_halving_search_matches_a_known_boundary():
    assert halving_search(lambda g: g <= 3.3, 10.0, 1e-6) == pytest.approx(3.3, abs=1e-5)
    assert halving_search(lambda g: False, 10.0, 1e-6) == 0.0


def test_minmax_fixed_gamma():
    honest, byz = matrices()
    out = MinMax(gamma=2.0, perturbation="sign").poison_gradients(honest, byz, context(11, 3))
    mu = honest.mean(0)
    torch.testing.assert_close(out[0], mu - 2.0 * torch.sign(mu))


def test_mimic_copies_one_honest_row_the_paper_heuristic_picks():
    honest, byz = matrices(seed=5)
    attack = Mimic()
    out = attack.poison_gradients(honest, byz, context(11, 3))
    matches = [i for i in range(len(honest)) if torch.equal(out[0], honest[i])]
    assert len(matches) == 1 and torch.equal(out[0], out[2])
    # The chosen row has the largest projection on the (estimated) top variance direction.
    centered = honest - honest.mean(0)
    assert matches[0] == int(torch.argmax(centered @ attack.direction))
    fixed = Mimic(victim=2).poison_gradients(honest, byz, context(11, 3))
    assert torch.equal(fixed[1], honest[2])


def test_fang_krum_row_is_selected_by_krum():
    honest, byz = matrices(seed=6, h=10, f=3)
    attack = Fang(variant="krum")
    out = attack.poison_gradients(honest, byz, context(13, 3))
    _, index = krum(torch.cat([honest, out]), 3)
    assert index >= 10  # Krum picks a crafted row
    mu = honest.mean(0)
    torch.testing.assert_close(out[0], -attack.last_lambda * torch.sign(mu))
    assert attack.last_lambda > 0


def test_fang_trimmed_mean_rows_lie_beyond_the_honest_range_against_the_sign():
    honest, byz = matrices(seed=7)
    out = Fang(variant="trimmed_mean").poison_gradients(honest, byz, context(11, 3)).numpy()
    h = honest.numpy()
    up = h.mean(0) > 0
    lo, hi = h.min(0), h.max(0)
    for row in out:
        assert np.all(np.where(up, row <= lo + 1e-6, row >= hi - 1e-6))
        width = np.where(up, np.abs(lo), np.abs(hi))  # within b = 2 of the extreme
        assert np.all(np.where(up, row >= lo - width - 1e-6, row <= hi + width + 1e-6))


def test_backdoor_poisons_a_fraction_and_builds_the_triggered_test_set():
    attack = Backdoor(target=1, fraction=0.5, trigger_size=2)
    attack.bind(10, (1, 8, 8), 3.0)
    x, y = torch.zeros(10, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    px, py = attack.poison_data(x, y, torch.Generator().manual_seed(0))
    stamped = (px[:, 0, -2:, -2:] == 3.0).all(dim=(1, 2))
    assert int(stamped.sum()) == 5 and (py[stamped] == 1).all()
    assert torch.equal(py[~stamped], y[~stamped]) and (px[~stamped] == 0).all()
    tx, ty = attack.backdoor_test_set(x, y)
    assert len(ty) == 9 and (ty == 1).all() and (tx[:, 0, -2:, -2:] == 3.0).all()
    flat = stamp(torch.zeros(2, 5), 2, 7.0)
    assert flat.tolist() == [[0, 0, 0, 7, 7]] * 2
    boosted = Backdoor(boost=4.0)
    torch.testing.assert_close(
        boosted.poison_gradients(None, torch.ones(2, 3), context(10, 2)), 4 * torch.ones(2, 3)
    )


def test_backdoor_replacement_factor_for_f_attackers_and_constrain_and_scale():
    """boost=auto: n / (f eta) (Bagdasaryan et al.'s n / eta shared by f attackers): with
    n = 20, f = 4, eta = 1 each row is scaled by 5, so that the mean of the 20 rows gains
    exactly the attackers' own update; norm_bound caps the scaled norm (a row already above
    the bound is scaled down to it, one below is scaled up to it, at most by the factor)."""
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.03, 0.04], [0.0, 0.0]])
    auto = Backdoor(boost="auto", server_lr=1.0)
    assert auto.factor(20, 4) == 5.0 and Backdoor(boost="auto", server_lr=0.5).factor(20, 4) == 10
    torch.testing.assert_close(auto.poison_gradients(None, rows, context(20, 4)), 5 * rows)
    honest_sum = torch.tensor([1.0, -2.0]) * 16
    mean = (honest_sum + auto.poison_gradients(None, rows, context(20, 4)).sum(0)) / 20
    torch.testing.assert_close(mean, honest_sum / 20 + rows.sum(0) / 4)  # replacement
    capped = Backdoor(boost="auto", norm_bound=1.0).poison_gradients(None, rows, context(20, 4))
    norms = torch.linalg.vector_norm(capped, dim=1)
    torch.testing.assert_close(norms, torch.tensor([1.0, 1.0, 0.25, 0.0]))  # 5 * 0.05 = 0.25
    with pytest.raises(ConfigError, match="attack.boost"):
        Backdoor(boost="max")


def test_nonfinite_rows():
    honest, byz = matrices()
    assert torch.isnan(NonFinite().poison_gradients(honest, byz, context(11, 3))).all()
    assert torch.isposinf(NonFinite("inf").poison_gradients(honest, byz, context(11, 3))).all()


def test_adaptive_beats_fixed_scales_and_leaves_the_defense_state_alone():
    honest, byz = matrices(seed=8, h=14, f=6, d=10)
    defense = CenteredClipping(tau=0.5)
    defense(torch.cat([honest, byz]))  # give it state
    state = defense.center.clone()
    attack = Adaptive(shape="alie")
    ctx = context(20, 6, defense=defense)
    out = attack.poison_gradients(honest, byz, ctx)
    assert torch.equal(defense.center, state)
    mu = honest.mean(0)

    def damage(rows):
        return float(torch.linalg.vector_norm(defense.simulate(torch.cat([honest, rows])) - mu))

    best = damage(out)
    for gamma in (0.0, 0.5, 1.0, alie_z(20, 6)):
        sigma = honest.std(0)
        assert best >= damage((mu - gamma * sigma).expand(6, -1)) - 1e-6
    assert Adaptive(shape="ipm").poison_gradients(honest, byz, context(20, 6, Median())).shape == (
        6,
        10,
    )


def test_line_maximize_follows_byzfl_trace_by_hand():
    """ByzFL 0.0.11's search on f(x) = -|x - p| from 0, step 1, ratio 0.8. Expansion: 0, 1
    (better, step 2), 3 (better, step 4), 7 (worse: step 3.2, stop). Contraction, always from
    the best point 3: 3 + 3.2 = 6.2, 3 + 2.56 = 5.56, 3 + 2.048 = 5.048, 4.6384, 4.31072,
    4.048576, 3.8388608 (the first better than 3 for p = 3.5)."""
    seen: list[float] = []

    def objective(x, peak=3.5):
        seen.append(x)
        return -abs(x - peak)

    trace = [0.0, 1.0, 3.0, 7.0, 6.2, 5.56, 5.048, 4.6384, 4.31072, 4.048576]
    assert line_maximize(objective, evals=10, delta=1.0) == 3.0
    np.testing.assert_allclose(seen, trace)
    seen.clear()
    assert line_maximize(objective, evals=11, delta=1.0) == pytest.approx(3.8388608)
    np.testing.assert_allclose(seen, [*trace, 3.8388608])
    seen.clear()
    # p = 2.5: no point of the contraction lies left of 3, so 3 stays the answer
    assert line_maximize(lambda x: objective(x, 2.5), evals=20, delta=1.0) == 3.0
    assert min(seen[4:]) > 3.0


def test_line_maximize_defaults_are_byzfl_0_0_11():
    seen: list[float] = []
    line_maximize(lambda x: seen.append(x) or x, evals=20)
    # an increasing objective: every expansion step doubles from 10; 20 evaluations in all
    assert seen[:4] == [0.0, 10.0, 30.0, 70.0] and len(seen) == 20


def test_grid_search_refines_between_the_neighbours_of_the_best_value():
    """The refinement looks between the best value's neighbours in increasing order of all
    values tried. (Taken by position in the order of evaluation, the second refinement of a
    peak at 0.0126 evaluated 12.5 to 87.5.)"""
    peak = 0.0126
    seen: list[float] = []

    def objective(gamma):
        seen.append(gamma)
        return -abs(math.log(gamma + 1e-12) - math.log(peak))

    best = grid_maximize(objective, 0.01, 100.0, 21, 2)
    first_grid = 22
    assert max(seen[first_grid:]) < 0.03 and min(seen[first_grid:]) > 0.0
    assert abs(best - peak) < 1e-3


def test_adaptive_line_search_uses_its_budget_and_beats_the_start():
    honest, byz = matrices(seed=4, h=14, f=4, d=12)
    calls = 0

    class Counting(Median):
        def simulate(self, updates, generator=None):
            nonlocal calls
            calls += 1
            return super().simulate(updates, generator)

    attack = Adaptive(shape="ipm", search="line", evals=9)
    ctx = context(18, 4, defense=Counting())
    out = attack.poison_gradients(honest, byz, ctx)
    assert calls == 9
    mu = honest.mean(0)
    torch.testing.assert_close(out, (-attack.last_gamma * mu).expand(4, -1))
    damage = [
        float(torch.linalg.vector_norm(Median()(torch.cat([honest, rows])) - mu))
        for rows in (torch.zeros(4, 12), out)
    ]
    assert damage[1] >= damage[0]


def test_attack_parameters_are_validated():
    for make, message in [
        (lambda: Adaptive(search="bisect"), "attack.search"),
        (lambda: Adaptive(search="line", ratio=0.4), "ratio=0.4"),
        (lambda: SignFlip(scale=0), "attack.scale"),
        (lambda: IPM(epsilon=-1), "attack.epsilon"),
        (lambda: Gaussian(std=0), "attack.std"),
        (lambda: MinMax(perturbation="x"), "attack.perturbation"),
        (lambda: Backdoor(fraction=0), "attack.fraction"),
        (lambda: ALIE(knowledge="psychic"), "attack.knowledge"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make()


@pytest.mark.parametrize("shape", ["alie", "ipm"])
def test_adaptive_search_in_the_span_of_the_rows_matches_the_full_search(shape):
    """Against a rotation-equivariant pipeline (clipping, NNM, geometric median) the search on
    span coordinates sees the same damage as on the full rows, so it picks the same scale; it
    hands the defense matrices of h + 2 columns instead of d."""
    honest, byz = matrices(seed=11, h=10, f=4, d=400)
    defense = build_defense(
        {
            "_target_": "defenses.geomed.GeometricMedian",
            "nu": 0.1,
            "iterations": 3,
            "tol": 0.0,
            "init": "zero",
        },
        # rows of norm about 22: clipping acts on some, and the damage has an interior peak
        pre_nodes(clipping={"c": 22.0}, nnm={"f": 4}),
    )
    assert defense.rotation_equivariant
    widths = []

    class Recording(type(defense)):
        def simulate(self, updates, generator=None):
            widths.append(updates.shape[1])
            return super().simulate(updates, generator)

    defense.__class__ = Recording
    ctx = context(14, 4, defense=defense)
    projected = Adaptive(shape=shape, search="line")
    full = Adaptive(shape=shape, search="line", project=False)
    out_projected = projected.poison_gradients(honest, byz, ctx)
    # at most h + 3 columns (fewer: mu, base and p lie partly in the honest rows' span)
    assert len(set(widths)) == 1 and widths[0] <= 13
    widths.clear()
    out_full = full.poison_gradients(honest, byz, ctx)
    assert set(widths) == {400}
    assert projected.last_gamma == pytest.approx(full.last_gamma, rel=1e-6)
    torch.testing.assert_close(out_projected, out_full)


def test_span_coordinates_keep_every_inner_product():
    honest, _ = matrices(seed=2, h=6, f=1, d=50)
    mu = honest.mean(0)  # inside the honest span: one direction fewer
    p = -honest.std(0)
    span = in_span_coordinates(honest, (mu, p), with_basis=True)
    assert span.honest.shape == (6, 7) and [v.shape for v in span.vectors] == [(7,), (7,)]
    full = torch.cat([honest, mu[None], p[None]]).double()
    coords = torch.cat([span.honest, *(v[None] for v in span.vectors)])
    torch.testing.assert_close(coords @ coords.T, full @ full.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close((coords @ span.basis.double()).float(), full.float())
    assert in_span_coordinates(honest, (mu, p)).basis is None  # only built when asked for
    zeros = torch.zeros(50)
    assert in_span_coordinates(torch.zeros(6, 50), (zeros, zeros)) is None
    honest[2, 5] = torch.nan
    assert in_span_coordinates(honest, (mu, p)) is None


def test_a_coordinatewise_rule_behind_equivariant_stages_sees_the_same_damage():
    """Clipping and NNM in front of the trimmed mean: those two stages run on the span
    coordinates, the trimmed mean on the rows mapped back; the search picks the same scale as
    on the full rows."""
    honest, byz = matrices(seed=5, h=10, f=4, d=300)
    node = {"_target_": "defenses.trimmed_mean.TrimmedMean", "f": 4}
    defense = build_defense(node, pre_nodes(clipping={"c": 2.0}, nnm={"f": 4}))
    assert not defense.rotation_equivariant and len(defense.split_equivariant()[0]) == 2
    ctx = context(14, 4, defense=defense)
    for shape in ("alie", "ipm"):
        projected = Adaptive(shape=shape, search="line")
        full = Adaptive(shape=shape, search="line", project=False)
        torch.testing.assert_close(
            projected.poison_gradients(honest, byz, ctx), full.poison_gradients(honest, byz, ctx)
        )
        assert projected.last_gamma == pytest.approx(full.last_gamma, rel=1e-6)


def test_alie_sign_is_the_published_minus_by_default_and_byzfl_plus_on_request():
    honest, byz = matrices(seed=9)
    h = honest.numpy().astype(np.float64)
    z = alie_z(11, 3)
    minus = ALIE().poison_gradients(honest, byz, context(11, 3))
    plus = ALIE(sign=1).poison_gradients(honest, byz, context(11, 3))
    np.testing.assert_allclose(minus[0], h.mean(0) - z * h.std(0, ddof=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plus[0], h.mean(0) + z * h.std(0, ddof=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="attack.sign"):
        ALIE(sign=0)


def test_shipped_alie_options_name_their_direction():
    from robustfl.api import compose_config

    assert compose_config(["attack=alie"]).attack.sign == -1
    byzfl = compose_config(["attack=optimal_alie"]).attack
    assert (byzfl.sign, byzfl.evals, byzfl.delta) == (1, 20, 10.0)


@pytest.mark.parametrize("bound", ["max", "min"])
def test_minsum_bound_is_the_largest_or_smallest_honest_sum(bound):
    honest, byz = matrices(seed=12)
    attack = MinSum(bound=bound, search="exact")
    out = attack.poison_gradients(honest, byz, context(11, 3))
    h = honest.numpy().astype(np.float64)
    sums = [sum(np.sum((a - b) ** 2) for b in h) for a in h]
    limit = max(sums) if bound == "max" else min(sums)
    crafted = out[0].numpy().astype(np.float64)
    assert loop_sum_distance(crafted, h) == pytest.approx(limit, rel=1e-5)
    assert MinSum(bound="min").poison_gradients(honest, byz, context(11, 3)) is not None
    with pytest.raises(ConfigError, match="attack.bound"):
        MinSum(bound="mean")


def test_mimic_warm_up_keeps_running_averages_as_the_authors_code():
    """Three warm-up rounds against a loop transcription of the authors' procedure: round 0
    sets mu and one power step from a random z; later rounds average mu and z over rounds;
    each round copies the row with the largest <h, z>; afterwards the choice stays."""
    rounds = [matrices(seed=20 + r, h=8, f=3, d=6) for r in range(5)]
    attack = Mimic(warmup=3)
    ctx = context(11, 3, seed=4)
    start = torch.randn(6, generator=torch.Generator().manual_seed(4)).double()
    mu = z = None
    chosen = None
    for t, (honest, byz) in enumerate(rounds):
        out = attack.poison_gradients(honest, byz, ctx)
        h = honest.double()
        if t < 3:
            mean = h.mean(0)
            mu = mean if t == 0 else (t * mu + mean) / (t + 1)
            cumulative = sum(float((g - mu) @ (start if t == 0 else z)) * (g - mu) for g in h)
            step = cumulative / torch.linalg.vector_norm(cumulative)
            z = step if t == 0 else (t * z + step) / (t + 1)
            z = z / torch.linalg.vector_norm(z)
            chosen = int(torch.argmax(h @ z))
        torch.testing.assert_close(out[0], honest[chosen])
        torch.testing.assert_close(attack.direction.double(), z, rtol=1e-5, atol=1e-6)


def test_adaptive_with_local_knowledge_never_reads_the_honest_rows():
    """The same Byzantine rows and two different honest matrices give the same rows."""
    honest_a, byz = matrices(seed=13, h=14, f=6, d=10)
    honest_b, _ = matrices(seed=14, h=14, f=6, d=10)
    outs = []
    for honest in (honest_a, 3.0 * honest_b + 1.0):
        attack = Adaptive(shape="alie", knowledge="local")
        outs.append(attack.poison_gradients(honest, byz, context(20, 6, Median(), seed=5)))
    torch.testing.assert_close(outs[0], outs[1])
    omniscient = [
        Adaptive(shape="alie").poison_gradients(h, byz, context(20, 6, Median(), seed=5))
        for h in (honest_a, 3.0 * honest_b + 1.0)
    ]
    assert not torch.equal(omniscient[0], omniscient[1])


def test_adaptive_simulations_draw_from_the_attackers_stream_not_the_servers():
    """Against bucketing (a random permutation each round) the attacker's search does not
    depend on the server's generator, unless it is told to see the server's draws."""
    honest, byz = matrices(seed=15, h=19, f=6, d=30)
    node = {"_target_": "defenses.krum.Krum", "f": 3}
    results = {}
    for sees_server in (False, True):
        for server_seed in (0, 1, 2):
            defense = build_defense(node, pre_nodes(bucketing={"s": 2}))
            ctx = context(25, 6, defense, seed=7)
            ctx.defense_generator = torch.Generator().manual_seed(server_seed)
            defense.prepare(ctx)
            state = ctx.defense_generator.get_state()
            attack = Adaptive(shape="alie", server_randomness=sees_server)
            attack.poison_gradients(honest, byz, ctx)
            assert torch.equal(ctx.defense_generator.get_state(), state)  # never drawn from
            results[sees_server, server_seed] = attack.last_gamma
    assert len({results[False, s] for s in (0, 1, 2)}) == 1
    assert len({results[True, s] for s in (0, 1, 2)}) > 1


def test_a_backdoor_that_would_stamp_nothing_is_an_error():
    attack = Backdoor(fraction=0.01)
    attack.bind(10, (1, 8, 8), 1.0)
    with pytest.raises(ConfigError, match="attack.fraction"):
        attack.poison_data(torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long), None)


def test_mimic_start_seed_starts_the_direction_as_the_authors_code():
    """``start_seed=0``: round 0's direction is one power step from
    ``torch.randn(d, generator=torch.Generator().manual_seed(0))`` whatever the run's stream
    (the authors' ``_init_callback``); two runs with other attack streams pick the same row."""
    honest, byz = matrices(seed=31, h=8, f=3, d=6)
    start = torch.randn(6, generator=torch.Generator().manual_seed(0))
    mu = honest.mean(0)
    expected = sum(float((g - mu) @ start) * (g - mu) for g in honest)
    expected = expected / torch.linalg.vector_norm(expected)
    directions = []
    for stream_seed in (4, 5):
        attack = Mimic(start_seed=0)
        attack.poison_gradients(honest, byz, context(11, 3, seed=stream_seed))
        directions.append(attack.direction)
        torch.testing.assert_close(attack.direction, expected, rtol=1e-5, atol=1e-6)
    unseeded = [Mimic(), Mimic()]
    for attack, stream_seed in zip(unseeded, (4, 5), strict=True):
        attack.poison_gradients(honest, byz, context(11, 3, seed=stream_seed))
    assert not torch.allclose(unseeded[0].direction, unseeded[1].direction)
