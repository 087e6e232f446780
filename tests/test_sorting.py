"""Column sorting and selection, the kernels of the coordinate-wise rules: the sorting network
against the 0-1 principle, both against numpy's sort."""

import numpy as np
import pytest
import torch

from defenses.functional import (
    block_columns,
    column_median,
    columns_transposed,
    in_column_blocks,
    sort_columns,
    sorting_network,
)


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


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test with 1 and with 2 torch threads (the kernels split work across them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_sort_columns_in_parallel_blocks(threads):
    values = torch.randn(14, 300_001)  # above the parallel threshold, 5 network blocks
    np.testing.assert_array_equal(sort_columns(values).numpy(), np.sort(values.numpy(), axis=0))
    for values in (torch.randn(40, 5001), torch.randn(14, 20_001)):  # numpy's sort in blocks
        values[3, ::7] = torch.nan  # (and NaN keeps 14 rows off the network)
        np.testing.assert_array_equal(sort_columns(values).numpy(), np.sort(values.numpy(), axis=0))


def test_nan_sorts_last_whatever_the_path():
    for n in (5, 30):
        values = torch.randn(n, 50)
        values[1, 3] = torch.nan
        values[2, 7] = torch.inf
        out = sort_columns(values)
        assert torch.isnan(out[-1, 3]) and torch.isfinite(out[:-1, 3]).all()
        assert torch.isposinf(out[-1, 7])
        assert torch.isnan(out).sum() == 1


def sorted_middle(values: np.ndarray) -> np.ndarray:
    """The median by definition: the middle of the sorted column (mean of two for even n)."""
    ordered = np.sort(values, axis=0)
    n = len(values)
    if n % 2:
        return ordered[n // 2]
    with np.errstate(invalid="ignore"):  # -inf + inf
        return 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


@pytest.mark.parametrize(
    ("n", "d"),
    [
        *[(n, 700) for n in (2, 3, 24, 25, 26, 51, 100, 257, 1000)],
        *[(51, 20_600), (128, 8200), (1000, 1100), (1001, 1100)],  # >= 2^20 entries: blocks
    ],
)
def test_column_median_equals_the_middle_of_the_sort(n, d):
    """Every path (network up to 24 rows; selection above, on the whole matrix, in column
    blocks up to 128 rows, in transposed column blocks above), odd and even n, with ties,
    infinities and NaN (NaN sorts last, so a column more than half NaN has a NaN median)."""
    rng = np.random.default_rng(n)
    values = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    values[rng.random(values.shape) < 0.02] = np.inf
    values[rng.random(values.shape) < 0.02] = -np.inf
    values[rng.random(values.shape) < 0.02] = np.nan
    values[: (n + 1) // 2, 0] = np.nan  # NaN at the middle
    values[:, 1] = np.nan
    values[: n // 2, 2] = -np.inf  # -inf and +inf meet in the middle: NaN for even n
    values[n // 2 :, 2] = np.inf
    np.testing.assert_array_equal(
        column_median(torch.from_numpy(values)).numpy(), sorted_middle(values)
    )


@pytest.mark.parametrize("n", [26, 128, 129, 1000])
def test_column_median_in_parallel_blocks(threads, n):
    """Above the parallel threshold: blocks of the matrix (n <= 128) or of its transpose."""
    values = torch.randn(n, 300_000 // n * 2 + 3)
    values[::7, ::5] = 1.0  # ties across blocks
    np.testing.assert_array_equal(column_median(values).numpy(), sorted_middle(values.numpy()))
    odd = values[:-1]
    np.testing.assert_array_equal(column_median(odd).numpy(), sorted_middle(odd.numpy()))


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(("n", "d"), [(50, 10_000), (64, 100_000), (1000, 9610), (30, 7)])
def test_block_columns_avoid_power_of_two_strides(workers, n, d):
    """Whole 16-byte groups, at most a worker's share (rounded up to 16 columns), and an odd
    multiple of 16 when the block is narrower than the share."""
    width = block_columns(n, d, workers)
    share = -(-d // workers)
    assert width % 16 == 0 and 16 <= width <= -(-share // 16) * 16
    if width < share:
        assert (width // 16) % 2 == 1
    assert block_columns(64, 10**6, 1, entries=1 << 16) == 1040  # not 1024: a 4 KiB stride


def test_column_median_of_a_non_contiguous_float64_view():
    values = torch.randn(60, 80, dtype=torch.float64)
    view = values[::2, 1::3]
    out = column_median(view)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), sorted_middle(view.numpy()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.complex128])
@pytest.mark.parametrize(("lo", "hi"), [(0, 37), (3, 37), (5, 8), (4, 4), (1, 2), (0, 36)])
def test_columns_transposed_is_the_plain_transposed_copy(dtype, lo, hi):
    """Bit for bit, whatever the dtype (16-byte groups of 4, 2, 8 or 16 columns, or the plain
    copy for 16-byte elements), offset and width (whole groups, a remainder, none), also for
    NaN payloads and -0.0, and for rows of odd byte length (37 float32 columns)."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((9, 37)) * 100).astype(dtype)
    if dtype == np.float32:
        values.view(np.uint32)[2, 5] = 0x7FA00001  # a signalling NaN's payload
        values[3, 6] = -0.0
    out = columns_transposed(values, lo, hi)
    assert out.flags.c_contiguous and out.shape == (hi - lo, 9)
    expected = np.ascontiguousarray(values[:, lo:hi].T)
    assert out.tobytes() == expected.tobytes()


def test_columns_transposed_of_rows_with_a_stride():
    values = np.arange(10 * 40, dtype=np.float32).reshape(10, 40)
    for view in (values[:, ::2], values[::3, 1:], values.T):  # a strided last axis, then none
        np.testing.assert_array_equal(columns_transposed(view, 1, 9), view[:, 1:9].T)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_column_blocks_cover_every_column_once(workers):
    seen: list[tuple[int, int]] = []
    in_column_blocks(lambda lo, hi: seen.append((lo, hi)), 1000, 64, workers)
    assert sorted(seen) == [(lo, min(lo + 64, 1000)) for lo in range(0, 1000, 64)]


def test_column_blocks_propagate_errors_and_run_nested_calls_in_place():
    def failing(lo, hi):
        if lo == 128:
            raise ValueError("block 128")

    with pytest.raises(ValueError, match="block 128"):
        in_column_blocks(failing, 1000, 64, 2)
    inner: list[int] = []

    def nested(lo, hi):  # a pool thread waiting on its own pool would deadlock
        in_column_blocks(lambda a, b: inner.append(b - a), hi - lo, 8, 2)

    in_column_blocks(nested, 256, 64, 2)
    assert sum(inner) == 256


@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch built without OpenMP")
def test_column_blocks_run_on_torchs_openmp_threads():
    """With torch on GNU OpenMP the blocks run on its team (whose threads would otherwise spin
    on the cores after each torch operation): two blocks at once, and no thread added."""
    import os
    import threading

    from defenses import functional

    if functional._openmp_parallel() is None:
        pytest.skip("torch's OpenMP runtime is not GNU OpenMP")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 16).sum()  # torch's two OpenMP threads exist
    before = set(os.listdir("/proc/self/task"))
    both = threading.Barrier(2, timeout=30)  # passes only with two blocks running at once
    seen: set[int] = set()

    def work(lo, hi):
        seen.add(threading.get_native_id())
        both.wait()

    try:
        in_column_blocks(work, 2, 1, 2)
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 2 and threading.get_native_id() in seen
    assert set(os.listdir("/proc/self/task")) <= before


def test_column_blocks_work_in_a_forked_child():
    """The pool is kept between calls; a forked child (a fork-based data loader or
    multiprocessing pool) must get working threads of its own, not the parent's dead ones."""
    import multiprocessing

    in_column_blocks(lambda lo, hi: None, 1000, 64, 2)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(_median_in_child)
        np.testing.assert_array_equal(result.get(timeout=30), _median_in_child())


def _median_in_child() -> np.ndarray:
    values = np.arange(3000 * 400, dtype=np.float32).reshape(3000, 400) % 997
    out = np.empty(400, dtype=np.float32)

    def work(lo, hi):
        out[lo:hi] = np.median(values[:, lo:hi], axis=0)

    in_column_blocks(work, 400, 16, 2)  # two threads, whatever torch's thread count
    return out
