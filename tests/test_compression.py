"""Compressed messages: each compressor against a hand-computed case and its definition,
unbiasedness over many draws, error feedback, Byzantine projection, and signSGD's vote."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import FAST
from hypothesis import given
from hypothesis import strategies as st

from defenses.majority_vote import MajorityVote, majority_vote
from robustfl.api import compose_config, run_experiment
from robustfl.build import build
from robustfl.compression import (
    QSGD,
    RandK,
    Sign,
    TopK,
    qsgd,
    rand_k,
    random_subsets,
    sign,
    top_k,
)
from robustfl.engine import Stopwatch, run_round
from robustfl.errors import ConfigError
from robustfl.results import read_metrics


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_top_k_by_hand():
    x = torch.tensor([[3.0, -5.0, 1.0, 0.5], [0.0, 0.1, -0.2, 0.3]])
    expected = torch.tensor([[3.0, -5.0, 0.0, 0.0], [0.0, 0.0, -0.2, 0.3]])
    assert torch.equal(top_k(x, 2), expected)


def test_rand_k_keeps_k_coordinates_per_row_scaled_by_d_over_k():
    x = torch.arange(1.0, 41.0).reshape(4, 10)
    out = rand_k(x, 3, generator())
    kept = out != 0
    assert kept.sum(dim=1).tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(out[kept], x[kept] * 10 / 3)
    assert not torch.equal(kept[0], kept[1]) or not torch.equal(kept[1], kept[2])
    plain = rand_k(x, 3, generator(), rescale=False)
    torch.testing.assert_close(plain[kept], x[kept])


def _mean_within(draws: torch.Tensor, x: torch.Tensor, sigmas: float = 5.0) -> None:
    """The mean of ``draws (m, ...)`` lies within ``sigmas`` standard errors of ``x``."""
    m = len(draws)
    error = (draws.mean(dim=0) - x).abs()
    bound = sigmas * draws.std(dim=0) / math.sqrt(m) + 1e-6
    assert bool((error <= bound).all()), (error - bound).max()


def test_rand_k_is_unbiased_over_many_draws():
    x = torch.tensor([[2.0, -1.0, 0.5, 4.0, -3.0, 0.0, 1.5]])
    draws = torch.stack([rand_k(x, 2, generator(seed))[0] for seed in range(4000)])
    _mean_within(draws, x[0])
    # each coordinate kept with probability k / d
    kept = (draws[:, :5] != 0).float().mean(dim=0)
    assert bool(((kept - 2 / 7).abs() < 0.03).all())


@pytest.mark.parametrize(
    ("d", "k", "draws"),
    [(5, 2, None), (5, 3, None), (6, 1, None), (5, 2, 2), (4, 4, None)],
    ids=["k<d/2", "k>d/2", "k=1", "redrawn rows", "k=d"],
)
def test_random_subsets_are_uniform_k_subsets(d, k, draws):
    """Every one of the C(d, k) subsets equally likely (chi-square over 6,000 rows), k distinct
    coordinates per row; with ``draws=2`` a fifth of the rows (d = 5, k = 2) draw a repeat and
    are drawn again."""
    rows = random_subsets(6000, d, k, generator(3), draws=draws)
    assert rows.shape == (6000, k)
    ordered = rows.sort(dim=1).values
    assert bool((ordered[:, 1:] != ordered[:, :-1]).all()) and 0 <= int(rows.min())
    assert int(rows.max()) < d
    subsets = list(itertools.combinations(range(d), k))
    counts = torch.zeros(len(subsets))
    for row in ordered.tolist():
        counts[subsets.index(tuple(row))] += 1
    expected = 6000 / len(subsets)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # at most 9 degrees of freedom: a uniform sampler exceeds 50 with probability 1e-7
    assert chi_square < 50, counts


def test_random_subsets_rows_are_independent_and_reproducible():
    a = random_subsets(200, 1000, 10, generator(5))
    assert torch.equal(a, random_subsets(200, 1000, 10, generator(5)))
    assert not torch.equal(a, random_subsets(200, 1000, 10, generator(6)))
    # two rows sharing a coordinate: about 1 - (1 - 10/1000)^10 = 9.6 % of pairs
    shared = (a[:100, :, None] == a[100:, None, :]).any(dim=2).any(dim=1).float().mean()
    assert 0.03 < float(shared) < 0.2


def test_rand_k_above_half_leaves_out_d_minus_k():
    x = torch.arange(1.0, 21.0).reshape(2, 10)
    out = rand_k(x, 8, generator(), rescale=True)
    kept = out != 0
    assert kept.sum(dim=1).tolist() == [8, 8]
    torch.testing.assert_close(out[kept], x[kept] * 10 / 8)


def test_qsgd_of_a_zero_bucket_is_zero():
    # buckets of 2: (3, -4) has norm 5, (0, 0) is zero, the last bucket (2,) is alone
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(qsgd(x, 4, 2), torch.tensor([[2.5, -3.75, 0.0, 0.0, 2.0]]))
    for seed in range(20):
        out = qsgd(x, 4, 2, generator(seed))
        assert torch.equal(out[:, 2:], torch.tensor([[0.0, 0.0, 2.0]]))
        assert out[0, 0] in (2.5, 3.75) and out[0, 1] in (-3.75, -5.0)
    assert torch.equal(qsgd(torch.zeros(2, 7), 16, 0, generator()), torch.zeros(2, 7))


def test_qsgd_nearest_levels_by_hand():
    # ||v|| = 5: |v| / ||v|| * s = (0.6, 0.8) with s = 1 rounds to (1, 1); with s = 4, to
    # (2.4, 3.2) -> (2, 3): 5 * (2/4, 3/4)
    v = torch.tensor([[3.0, -4.0]])
    torch.testing.assert_close(qsgd(v, 1, 0), torch.tensor([[5.0, -5.0]]))
    torch.testing.assert_close(qsgd(v, 4, 0), torch.tensor([[2.5, -3.75]]))


def test_qsgd_stochastic_levels_are_the_two_neighbours():
    v = torch.tensor([[3.0, -4.0]])
    draws = torch.cat([qsgd(v, 4, 0, generator(seed)) for seed in range(2000)])
    # 4 * 0.6 = 2.4: level 2 or 3, i.e. 2.5 or 3.75; 4 * 0.8 = 3.2: -3.75 or -5
    assert set(draws[:, 0].tolist()) == {2.5, 3.75}
    assert set(draws[:, 1].tolist()) == {-3.75, -5.0}
    # P(level 3) = 0.4 for the first coordinate
    assert abs(float((draws[:, 0] == 3.75).float().mean()) - 0.4) < 0.04


def test_qsgd_with_buckets_is_unbiased_over_many_draws():
    # d = 7 in buckets of 3 (the last one padded): each bucket has its own norm
    x = torch.tensor([[1.0, -2.0, 0.5, 8.0, 0.0, -1.0, 3.0]])
    draws = torch.cat([qsgd(x, 2, 3, generator(seed)) for seed in range(4000)])
    _mean_within(draws, x[0])
    # a coordinate is never quantized above its bucket's norm
    norms = torch.tensor([math.sqrt(5.25)] * 3 + [math.sqrt(65.0)] * 3 + [3.0])
    assert bool((draws.abs() <= norms + 1e-5).all())


def test_sign_by_hand():
    x = torch.tensor([[0.0, -2.0, 3.0]])
    assert torch.equal(sign(x), torch.tensor([[1.0, -1.0, 1.0]]))
    torch.testing.assert_close(sign(x, scaled=True), torch.tensor([[5 / 3, -5 / 3, 5 / 3]]))


@pytest.mark.parametrize(
    "compression",
    [TopK(0.5), RandK(0.5), QSGD(levels=1, bucket_size=0), Sign(), Sign(scaled=True)],
    ids=["top_k", "rand_k", "qsgd", "sign", "scaled_sign"],
)
def test_every_compressor_discards_a_row_it_cannot_encode(compression):
    """One policy: a row with NaN or an infinity, or one QSGD cannot encode (a bucket norm
    beyond float32: [3e38, 3e38, 1, 2]), reaches the server as a NaN row, from an honest
    client's encoding and from a Byzantine client's projection alike; other rows are kept."""
    compression.bind(4, 4, torch.device("cpu"))
    rows = torch.tensor(
        [[math.nan, 1.0, 2.0, 3.0], [-math.inf, 1.0, 2.0, 3.0], [1.0, -2.0, 0.5, 4.0]]
    )
    rows = torch.cat([rows, torch.tensor([[3e38, 3e38, 1.0, 2.0]])])
    cannot = [True, True, False, isinstance(compression, QSGD)]
    encoded = rows.clone()
    compression.encode(encoded, torch.arange(4), generator())
    projected = compression.valid(rows.clone())
    for out in (encoded, projected):
        for row, discarded in zip(out, cannot, strict=True):
            assert bool(torch.isnan(row).all()) if discarded else bool(torch.isfinite(row).all())


def test_majority_vote_lets_nonfinite_entries_abstain():
    """[[inf], [inf], [-1]]: the infinities abstain, the one finite vote decides."""
    rows = torch.tensor([[math.inf, math.nan], [math.inf, 1.0], [-1.0, 1.0]])
    assert majority_vote(rows).tolist() == [-1.0, 1.0]


def _bound(compression, d: int = 10, clients: int = 4):
    compression.bind(clients, d, torch.device("cpu"))
    return compression


@pytest.mark.parametrize(
    "compression",
    [
        TopK(0.3, error_feedback=True),
        RandK(0.3, rescale=False, error_feedback=True),
        Sign(scaled=True, error_feedback=True),
    ],
    ids=["top_k", "rand_k", "scaled_sign"],
)
def test_error_feedback_conserves_the_residual(compression):
    """``message + new residual = update + old residual``, per client, round after round; the
    residual of clients not in the round is untouched."""
    compression = _bound(compression)
    g = generator(1)
    for clients in ([0, 2, 3], [0, 1, 2, 3], [0, 2, 3], [0, 1, 2, 3]):  # some, then everyone
        clients = torch.tensor(clients)
        updates = torch.randn(len(clients), 10, generator=g)
        before = compression.memory.clone()
        messages = updates.clone()
        compression.encode(messages, clients, g)
        torch.testing.assert_close(
            messages + compression.memory[clients], updates + before[clients], rtol=0, atol=1e-6
        )
        if len(clients) == 3:
            assert torch.equal(compression.memory[1], before[1])
    assert compression.memory.abs().sum() > 0


def test_without_error_feedback_nothing_is_kept():
    compression = _bound(TopK(0.3))
    assert compression.memory is None
    messages = torch.randn(4, 10, generator=generator())
    expected = top_k(messages, 3)
    compression.encode(messages, torch.arange(4), generator())
    assert torch.equal(messages, expected)


def test_bits_per_message():
    d = 1000
    assert _bound(TopK(0.01), d).bits_per_message() == 10 * (32 + 10)
    assert _bound(Sign(), d).bits_per_message() == 1000
    assert _bound(Sign(scaled=True), d).bits_per_message() == 1032
    # 2 buckets of 512: 2 norms; 16 levels: 1 sign bit + 5 level bits per coordinate
    assert _bound(QSGD(16, 512), d).bits_per_message() == 2 * 32 + 1000 * 6


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: RandK(0.1, rescale=True, error_feedback=True), "compression.rescale=false"),
        (lambda: QSGD(error_feedback=True), "contractive"),
        (lambda: Sign(scaled=False, error_feedback=True), "compression.scaled=true"),
        (lambda: TopK(1.0), "compression.ratio=1.0"),
        (lambda: RandK(0.0), "compression.ratio=0.0"),
        (lambda: QSGD(levels=0), "compression.levels=0"),
    ],
)
def test_invalid_settings_name_the_parameter(make, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        make()


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("sign", lambda rows, k: bool(((rows == 1) | (rows == -1)).all())),
        ("top_k", lambda rows, k: bool(((rows != 0).sum(dim=1) <= k).all())),
    ],
)
def test_byzantine_rows_are_valid_messages(name, valid):
    """IPM's crafted rows are projected to the protocol: signs, or at most k coordinates."""
    sim = build(
        compose_config(
            [*FAST, f"compression={name}", "attack=ipm", "compression.error_feedback=false"]
        )
    )
    seen = []
    aggregate = type(sim.defense).__call__

    def recording(self, updates):
        seen.append(updates.clone())
        return aggregate(self, updates)

    type(sim.defense).__call__ = recording
    try:
        run_round(sim, 0, Stopwatch({}))
    finally:
        type(sim.defense).__call__ = aggregate
    rows = seen[0]
    k = getattr(sim.compression, "k", None)
    assert valid(rows, k)
    byz = sim.federation.is_byzantine
    # IPM sends minus a multiple of the honest mean: its projected rows point the other way
    assert float(rows[byz].mean(dim=0) @ rows[~byz].mean(dim=0)) < 0


def test_majority_vote_by_hand():
    rows = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -3.0], [-1.0, -1.0, math.nan]])
    # votes: 1 + 1 - 1, -1 + 1 - 1, 1 - 1 (the NaN abstains): a tie gives 0
    torch.testing.assert_close(majority_vote(rows, 0.5), torch.tensor([0.5, -0.5, 0.0]))


@given(st.integers(min_value=0, max_value=10_000))
def test_majority_vote_is_permutation_invariant_and_a_sign(seed):
    g = generator(seed)
    rows = torch.randn(7, 5, generator=g)
    out = MajorityVote(step=0.1)(rows)
    assert torch.equal(out, majority_vote(rows[torch.randperm(7, generator=g)], 0.1))
    assert bool((out.abs() == 0.1).all())  # 7 voters: no ties


def test_invalid_majority_vote_step_is_named():
    with pytest.raises(ConfigError, match="defense.step=0"):
        MajorityVote(step=0)


def test_signsgd_with_majority_vote_learns(run_dir):
    """Clients send one bit per coordinate; the server steps by the vote."""
    run_experiment(
        ["fl.rounds=30", "progress=false", "compression=sign", "defense=majority_vote"], run_dir
    )
    history = read_metrics(run_dir)
    assert history[-1]["accuracy"] > 0.8
    assert history[-1]["bits_per_client"] == history[0]["bits_per_client"]


def test_coordinatewise_median_of_sparse_messages_does_not_learn(tmp_path):
    """At 1 % top-k, each coordinate is non-zero in about 0.2 of 20 messages: its median is 0,
    so the median never moves the model, where the mean of the same messages learns."""
    accuracy = {}
    for defense in ("median", "mean"):
        summary = run_experiment(
            ["fl.rounds=20", "progress=false", "compression=top_k", f"defense={defense}"],
            tmp_path / defense,
        )
        accuracy[defense] = summary["final"]["accuracy"]
    assert accuracy["median"] < 0.2 < 0.8 < accuracy["mean"]
