"""Column sorting, the kernel of the coordinate-wise rules: the sorting network against the
0-1 principle and against numpy's sort."""

import numpy as np
import pytest
import torch

from defenses.functional import sort_columns, sorting_network


def apply_network(pairs, columns: np.ndarray) -> np.ndarray:
    rows = [r.copy() for r in columns]
    for i, j in pairs:
        rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    return np.stack(rows)


@pytest.mark.parametrize("n", range(2, 17))
def test_network_sorts_every_zero_one_input(n):
    """The 0-1 principle: a comparator network sorts every input iff it sorts all 2^n
    sequences of zeros and ones; here all of them, as the columns of one matrix."""
    pairs = sorting_network(n)
    assert all(0 <= i < j < n for i, j in pairs)
    bits = ((np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.int8)
    ordered = apply_network(pairs, bits)
    assert (np.diff(ordered, axis=0) >= 0).all()
    np.testing.assert_array_equal(ordered.sum(axis=0), bits.sum(axis=0))


@pytest.mark.parametrize("n", range(17, 25))
def test_network_sorts_random_zero_one_inputs_up_to_24(n):
    rng = np.random.default_rng(n)
    bits = (rng.random((n, 200_000)) < rng.random(200_000)).astype(np.int8)
    ordered = apply_network(sorting_network(n), bits)
    assert (np.diff(ordered, axis=0) >= 0).all()


def test_network_size_is_batchers():
    # Knuth's counts for Batcher's odd-even merge sort at powers of two.
    assert [len(sorting_network(2**k)) for k in range(1, 6)] == [1, 5, 19, 63, 191]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 14, 24, 25, 40])
def test_sort_columns_equals_numpy_with_ties_and_infinities(n):
    rng = np.random.default_rng(n)
    values = rng.integers(-3, 4, size=(n, 3001)).astype(np.float32)  # many ties
    values[rng.random(values.shape) < 0.01] = np.inf
    values[rng.random(values.shape) < 0.01] = -np.inf
    out = sort_columns(torch.from_numpy(values))
    np.testing.assert_array_equal(out.numpy(), np.sort(values, axis=0))


@pytest.mark.parametrize("threads", [1, 2])
def test_sort_columns_in_parallel_blocks(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values = torch.randn(14, 300_001)  # above the parallel threshold, 5 network blocks
        np.testing.assert_array_equal(sort_columns(values).numpy(), np.sort(values.numpy(), axis=0))
    finally:
        torch.set_num_threads(before)


def test_nan_sorts_last_whatever_the_path():
    for n in (5, 30):
        values = torch.randn(n, 50)
        values[1, 3] = torch.nan
        values[2, 7] = torch.inf
        out = sort_columns(values)
        assert torch.isnan(out[-1, 3]) and torch.isfinite(out[:-1, 3]).all()
        assert torch.isposinf(out[-1, 7])
        assert torch.isnan(out).sum() == 1
