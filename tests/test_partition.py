import numpy as np
import pytest

from robustfl.errors import ConfigError
from robustfl.partition import (
    dirichlet,
    gamma_similarity,
    iid,
    label_sorted,
    partition_hash,
    shards,
)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def rng(seed=0):
    return np.random.default_rng(seed)


def check_is_partition(parts, total):
    merged = np.concatenate(parts)
    assert len(merged) == total
    assert len(np.unique(merged)) == total  # disjoint and covering


def test_iid_is_a_balanced_partition_with_iid_labels():
    parts = iid(LABELS, 10, rng())
    check_is_partition(parts, len(LABELS))
    assert {len(p) for p in parts} == {100}
    # Every client sees (nearly) every class: label histograms close to uniform.
    for p in parts:
        counts = np.bincount(LABELS[p], minlength=10)
        assert counts.min() >= 2 and counts.max() <= 25


def test_dirichlet_small_alpha_concentrates_labels_large_alpha_spreads_them():
    def mean_dominant_share(alpha):
        parts = dirichlet(LABELS, 10, rng(1), alpha=alpha)
        check_is_partition(parts, len(LABELS))
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])

    skewed, spread = mean_dominant_share(0.05), mean_dominant_share(100.0)
    assert skewed > 0.6
    assert spread < 0.25


def test_dirichlet_respects_min_size_or_explains():
    parts = dirichlet(LABELS, 10, rng(2), alpha=0.5, min_size=16)
    assert min(len(p) for p in parts) >= 16
    with pytest.raises(ConfigError, match="partition.alpha"):
        dirichlet(LABELS, 10, rng(), alpha=0.0)
    with pytest.raises(ConfigError, match="raise partition.alpha"):
        dirichlet(LABELS, 100, rng(), alpha=0.01, min_size=10, max_tries=3)


def test_shards_give_each_client_at_most_shards_per_client_labels():
    parts = shards(LABELS, 10, rng(3), shards_per_client=2)
    check_is_partition(parts, len(LABELS))
    for p in parts:
        assert len(np.unique(LABELS[p])) <= 2
    with pytest.raises(ConfigError, match="shards_per_client"):
        shards(LABELS, 10, rng(), shards_per_client=0)


def test_partitions_are_deterministic_and_hash_differs_between_them():
    a, b = iid(LABELS, 10, rng(5)), iid(LABELS, 10, rng(5))
    assert partition_hash(a) == partition_hash(b)
    assert partition_hash(a) != partition_hash(iid(LABELS, 10, rng(6)))


def test_label_sorted_gives_honest_clients_contiguous_labels_and_byzantine_iid():
    byzantine = np.zeros(10, bool)
    byzantine[[2, 7]] = True
    parts = label_sorted(LABELS, 10, rng(4), byzantine=byzantine)
    honest = [parts[i] for i in range(10) if not byzantine[i]]
    check_is_partition(honest, len(LABELS))  # honest clients split the whole set
    for p in honest:
        assert len(np.unique(LABELS[p])) <= 2  # 8 contiguous shards of 125 over 10 labels
    for i in (2, 7):
        assert len(parts[i]) == 100 and len(np.unique(LABELS[parts[i]])) >= 8


def test_gamma_similarity_interpolates_between_sorted_and_iid():
    def labels_per_client(gamma):
        parts = gamma_similarity(LABELS, 10, rng(5), gamma=gamma)
        check_is_partition(parts, len(LABELS))
        return np.mean([len(np.unique(LABELS[p])) for p in parts])

    assert labels_per_client(0.0) <= 2
    assert labels_per_client(1.0) == 10
    assert labels_per_client(0.0) < labels_per_client(0.5) <= labels_per_client(1.0)
    with pytest.raises(ConfigError, match="partition.gamma"):
        gamma_similarity(LABELS, 10, rng(), gamma=1.5)


def test_gamma_similarity_shares_the_whole_set_among_honest_clients():
    """ByzFL's Byzantine workers hold no data: with f = 4 of 14 clients the 10 honest ones
    split the whole training set (every label is seen honestly); Byzantine clients get IID
    samples."""
    byzantine = np.zeros(14, bool)
    byzantine[[0, 5, 9, 13]] = True
    for gamma in (0.0, 0.66):
        parts = gamma_similarity(LABELS, 14, rng(7), gamma=gamma, byzantine=byzantine)
        honest = [parts[i] for i in range(14) if not byzantine[i]]
        check_is_partition(honest, len(LABELS))
        for i in (0, 5, 9, 13):
            assert len(parts[i]) == len(LABELS) // 14
            assert len(np.unique(LABELS[parts[i]])) >= 8
    sorted_parts = gamma_similarity(LABELS, 14, rng(7), gamma=0.0, byzantine=byzantine)
    assert max(len(np.unique(LABELS[sorted_parts[i]])) for i in np.flatnonzero(~byzantine)) <= 2
