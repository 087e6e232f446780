"""Every fast path of robustfl.kernels equals its plain torch definition: ties, +-inf, NaN,
float32 cancellation, shapes on both sides of every size threshold, one and two threads."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

from robustfl.kernels import column_median, mean_and_std, median_of_sorted, sort_columns
from robustfl.kernels.columns import NETWORK_MAX_ROWS, PARALLEL_MIN, sorting_network


def apply_network(pairs, columns: np.ndarray) -> np.ndarray:
    rows = list(columns)
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


@pytest.mark.parametrize("n", range(17, NETWORK_MAX_ROWS + 1))
def test_network_sorts_random_zero_one_inputs_up_to_its_largest_size(n):
    rng = np.random.default_rng(n)
    bits = (rng.random((n, 200_000)) < rng.random(200_000)).astype(np.int8)
    ordered = apply_network(sorting_network(n), bits)
    assert (np.diff(ordered, axis=0) >= 0).all()


def test_network_size_is_batchers():
    # Knuth's counts for Batcher's odd-even merge sort at powers of two.
    assert [len(sorting_network(2**k)) for k in range(1, 6)] == [1, 5, 19, 63, 191]


@pytest.fixture(params=[1, 2])
def threads(request):
    """The test with 1 and with 2 torch threads (the kernels split columns across them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def hostile(n: int, d: int, seed: int, nan: bool = True) -> torch.Tensor:
    """Integer values (many ties) with +-inf and, optionally, NaN entries."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    values[rng.random(values.shape) < 0.02] = np.inf
    values[rng.random(values.shape) < 0.02] = -np.inf
    if nan:
        values[rng.random(values.shape) < 0.02] = np.nan
        values[: (n + 1) // 2, 0] = np.nan  # NaN at the middle
        values[:, 1] = np.nan
    values[: n // 2, 2] = -np.inf  # -inf and +inf meet in the middle: NaN for even n
    values[n // 2 :, 2] = np.inf
    return torch.from_numpy(values)


SHAPES = [
    *[(n, 301) for n in (1, 2, 3, 7, 14, 24, 25, 26, 51, 128, 129, 257)],
    (14, PARALLEL_MIN // 14 + 3),  # network, split between threads
    (40, PARALLEL_MIN // 40 + 5),  # numpy's sort / selection, split
    (1001, PARALLEL_MIN // 1001 + 700),  # transposed selection, split
]


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("nan", [False, True])
def test_sort_columns_is_torch_sort(threads, n, d, nan):
    values = hostile(n, d, n, nan)
    expected = values.sort(dim=0).values
    torch.testing.assert_close(sort_columns(values), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_column_median_is_the_middle_of_torch_sort(threads, n, d):
    values = hostile(n, d, n + 1)
    expected = median_of_sorted(values.sort(dim=0).values)
    torch.testing.assert_close(column_median(values), expected, rtol=0, atol=0, equal_nan=True)
    odd = values[:-1] if n > 1 else values
    expected = median_of_sorted(odd.sort(dim=0).values)
    torch.testing.assert_close(column_median(odd), expected, rtol=0, atol=0, equal_nan=True)


def test_kernels_take_float64_and_non_contiguous_views():
    values = torch.randn(300, 801, dtype=torch.float64)[::2, 1::2]
    torch.testing.assert_close(sort_columns(values), values.sort(dim=0).values, rtol=0, atol=0)
    expected = median_of_sorted(values.sort(dim=0).values)
    torch.testing.assert_close(column_median(values), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("rows", "d"), [(1, 300), (2, 300), (150, 300), (25, 100_000)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_mean_and_std_is_the_sample_or_population_std(rows, d, unbiased):
    """Against the float64 definition, for one block and several (25 rows of 400 kB), on rows
    with a large common part: the deviations, not the values, must be squared, and the
    float32 mean's rounding corrected."""
    g = torch.Generator().manual_seed(rows)
    values = 50.0 + 1e-3 * torch.randn(rows, d, generator=g)
    mu, sigma = mean_and_std(values, unbiased)
    exact = values.double()
    expected_mu = exact.mean(dim=0)
    divisor = max(rows - 1, 1) if unbiased else rows
    expected_sigma = ((exact - expected_mu) ** 2).sum(dim=0).div(divisor).sqrt()
    torch.testing.assert_close(mu.double(), expected_mu, rtol=1e-6, atol=0)
    torch.testing.assert_close(sigma.double(), expected_sigma, rtol=1e-6, atol=1e-12)
    assert mu.dtype == sigma.dtype == torch.float32


def test_mean_and_std_of_a_non_finite_column_is_nan_as_torch_std():
    values = torch.randn(80, 5)
    values[70, 1] = torch.inf
    values[3, 2] = torch.nan
    _, sigma = mean_and_std(values)
    torch.testing.assert_close(sigma, values.std(dim=0), equal_nan=True)
    assert sigma[1].isnan() and sigma[2].isnan() and sigma[[0, 3, 4]].isfinite().all()


def _median_of_a_large_matrix() -> np.ndarray:
    # built in numpy: torch's own parallel operations hang in a child forked after torch's
    # OpenMP threads started (a limitation of GNU OpenMP, not of these kernels)
    values = np.arange(3000 * 400, dtype=np.float32).reshape(3000, 400) % 997
    return column_median(torch.from_numpy(values)).numpy()


def test_kernels_work_in_a_forked_child():
    """A forked child (a fork-based data loader or multiprocessing pool) gets threads of its
    own, not the parent's, which do not exist there."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = _median_of_a_large_matrix()  # the parent's threads exist now
        with multiprocessing.get_context("fork").Pool(1) as pool:
            result = pool.apply_async(_median_of_a_large_matrix)
            np.testing.assert_array_equal(result.get(timeout=60), expected)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 3, 50])
@pytest.mark.parametrize("d", [7, 256, 60_001])
@pytest.mark.parametrize("scale", [1.0, 2.0**-100, 2.0**90])
def test_centered_products_equal_the_product_of_the_centred_rows(n, d, scale):
    """Blocked accumulation (d above one block) against ``c @ c.T`` in float64, on rows with
    a large common part, at scales where a plain float32 product would over- or underflow."""
    from robustfl.kernels import centered_products

    g = torch.Generator().manual_seed(n * d)
    x = ((1e3 + torch.randn(n, d, generator=g, dtype=torch.float64)) * scale).float()
    center = x[n // 2].clone()
    exact = (x.double() - center.double()) / scale
    exact = exact @ exact.T
    got = centered_products(x, center, scale).double()
    assert float((got - exact).abs().max()) <= 1e-5 * float(exact.abs().max()) + 1e-30
