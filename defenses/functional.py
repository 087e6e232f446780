"""Vectorized building blocks shared by the rules: coordinate sorting, pairwise distances,
clipping. All take an update matrix ``updates (n, d)``; none loops over clients or coordinates.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor

from robustfl.linalg import finite_rows, pairwise_sq_distances, zero_nonfinite

__all__ = [
    "block_columns",
    "clip_rows",
    "clip_scales",
    "clipped_mean",
    "column_median",
    "columns_transposed",
    "finite_rows",
    "in_column_blocks",
    "mean_of_rows",
    "median_of_sorted",
    "pairwise_sq_distances",
    "row_norms",
    "sort_columns",
]


# Entries from which the column kernels (sort, selection, Bulyan's window search) split the
# columns between threads (see in_column_blocks): two threads paid off from about 1.5e5
# entries (the median 0.55 to 0.9x, the sort 0.6 to 0.9x of one call on the whole matrix, for
# n = 26 to 1000) and cost 6 to 40 % more at 5e4.
PARALLEL_MIN = 1 << 17
# On one thread, column blocks pay off only once the matrix leaves the cache.
_BLOCKS_ONE_THREAD_MIN = 1 << 20
# Up to this many rows a sorting network over whole rows beats numpy's per-column sort (about
# 2x at n = 8 to 20, even at n = 24; equal at n = 32), in column blocks that stay in cache.
_NETWORK_MAX_ROWS = 24
_NETWORK_BLOCK = 1 << 16  # columns
# The network's many short numpy calls take turns for the GIL: on OpenMP's team (see
# in_column_blocks) a second thread paid off from about 10^6 entries ((14, 1e5): 3.6 -> 2.9
# ms, (14, 1e6): 48 -> 36 ms) and cost time below 5e5 ((14, 3e4): 0.9 -> 1.3 ms).
_NETWORK_PARALLEL_MIN = 1 << 20
# Column blocks of the selection and the sort hold about this many entries (1 MiB of float32):
# best or tied among 2^15 to 2^19 from n = 26 to 1000.
_BLOCK_ENTRIES = 1 << 18
# Up to this many rows numpy's own partition along axis 0 selects as fast as on transposed
# blocks or faster (n = 26: 0.65 against 0.97 of the whole-matrix call at 6e6 entries, one
# thread): the n cache lines it gathers a column from stay in L1 for the next 15 columns.
# Above, transposed blocks (at n = 1000: 39 against 70 ms).
_GATHER_MAX_ROWS = 128


def block_columns(n: int, d: int, workers: int, entries: int = _BLOCK_ENTRIES) -> int:
    """Columns per block of an ``(n, d)`` matrix for :func:`in_column_blocks`: about
    ``entries`` entries, at most an equal share per worker, and an odd multiple of 16.

    The multiple of 16 keeps whole 16-byte groups for :func:`columns_transposed`; the odd
    factor keeps the rows of a contiguous copy of the block from a power-of-two stride, whose
    column reads all fall into one cache set (a 1,024-column block of 64 rows took 1.8x the
    time of a 1,040-column one).
    """
    width = max(1, entries // n) // 32 * 32 + 16
    share = -(-d // workers)
    return min(width, -(-share // 16) * 16)


@cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """The comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n``
    inputs: applying ``(x_i, x_j) <- (min, max)`` in order sorts any ``n`` values.

    Built for the next power of two; comparators that touch a position ``>= n`` are dropped,
    which is exact because padding with ``+inf`` would leave those comparators idle.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    merge = 1
    while merge < size:  # merge sorted runs of length `merge` into runs of 2 * merge
        step = merge
        while step >= 1:
            for start in range(step % merge, size - step, 2 * step):
                for offset in range(min(step, size - start - step)):
                    i, j = start + offset, start + offset + step
                    if i // (2 * merge) == j // (2 * merge) and j < n:
                        pairs.append((i, j))
            step //= 2
        merge *= 2
    return tuple(pairs)


def _network_sort(source: np.ndarray, out: np.ndarray) -> None:
    """Sort the columns of ``source (n, m)`` into ``out`` with :func:`sorting_network`: whole
    rows per comparator, so every step is one vectorized ``minimum`` / ``maximum``."""
    rows = list(source)
    for i, j in sorting_network(len(rows)):
        low = np.minimum(rows[i], rows[j])
        rows[j] = np.maximum(rows[i], rows[j])
        rows[i] = low
    for k, row in enumerate(rows):
        out[k] = row


_POOLS: dict[int, ThreadPoolExecutor] = {}
_in_block = threading.local()  # set while a thread runs blocks of in_column_blocks
_OPENMP_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_after_fork = threading.Event()  # set in a forked child


def _forked() -> None:
    # A forked child inherits the pools but not their threads: start new ones there. GNU
    # OpenMP cannot start a team in a child forked after its threads existed (it waits on
    # the parent's threads), so the child uses the pool.
    _POOLS.clear()
    _after_fork.set()


os.register_at_fork(after_in_child=_forked)


@cache
def _openmp_parallel():
    """GNU OpenMP's ``GOMP_parallel(fn, data, num_threads, flags)`` from the runtime torch has
    already loaded, or None (another runtime, none, or not yet loaded: never a second copy)."""
    if not torch.backends.openmp.is_available():
        return None
    try:
        runtime = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
        parallel = runtime.GOMP_parallel
    except (OSError, AttributeError):
        return None
    parallel.argtypes = [_OPENMP_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    return parallel


def in_column_blocks(work, columns: int, block: int, workers: int) -> None:
    """``work(lo, hi)`` over column blocks ``[lo, hi)`` of at most ``block`` of ``columns``, on
    ``workers`` threads when there is more than one block (numpy's kernels release the GIL).

    The threads, the calling one among them, take the next block until none is left. They
    are torch's own OpenMP threads when torch runs on GNU OpenMP: after each parallel torch
    operation those threads spin for about 9 ms before they sleep, and a thread of ours
    started in that time shares a core with a spinning one (a 2-thread sort right after a
    torch reduction took 3.1 ms, more than the 2.8 ms of one thread; on OpenMP's team 1.7 ms).
    Otherwise (and in a forked child) threads from a pool kept between calls: a fresh pool
    and one task per block cost about 1.2 ms per call at (1000, 9610).
    """
    spans = pairwise([*range(0, columns, block), columns])  # shared, read under the lock
    workers = min(workers, -(-columns // block))
    if workers <= 1 or getattr(_in_block, "active", False):  # nested: run here
        for lo, hi in spans:
            work(lo, hi)
        return
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(_data=None) -> None:
        _in_block.active = True
        try:
            while True:
                with lock:
                    span = None if errors else next(spans, None)
                if span is None:
                    return
                work(*span)
        except BaseException as error:  # re-raised in the calling thread
            with lock:
                errors.append(error)
        finally:
            _in_block.active = False

    parallel = None if _after_fork.is_set() else _openmp_parallel()
    if parallel is not None:
        parallel(_OPENMP_CALLBACK(run), None, workers, 0)
    else:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers - 1, "robustfl-columns")
        others = [pool.submit(run) for _ in range(workers - 1)]
        run()
        for future in others:
            future.result()
    if errors:
        raise errors[0]


def _sort_in_place(array: np.ndarray) -> None:
    """Sort ``array`` along axis 0 in place, in column blocks on ``torch.get_num_threads()``
    threads (numpy's sort releases the GIL)."""
    workers = max(1, torch.get_num_threads())
    n, d = array.shape
    if workers == 1 or array.size < PARALLEL_MIN:
        array.sort(axis=0)
        return
    in_column_blocks(
        lambda lo, hi: array[:, lo:hi].sort(axis=0), d, block_columns(n, d, workers), workers
    )


def sort_columns(updates: Tensor) -> Tensor:
    """``updates (n, d)`` sorted along the client axis (each coordinate independently).

    NaN sorts after +inf, so a non-finite row behaves as an extreme value in every coordinate
    it poisons. On the CPU, up to 24 rows, a sorting network of whole-row ``minimum`` /
    ``maximum`` in cache-sized column blocks (about twice as fast as numpy's sort; used only
    when no entry is NaN, since ``minimum`` propagates NaN); otherwise numpy's sort, measured
    5 to 8 times faster here than ``torch.sort(dim=0)``, on column blocks in parallel threads.
    Sorting the ``(n, d)`` row-major layout beat transposing to ``(d, n)`` first, because the
    transpose copy costs more than it saves (see docs/performance.md).
    """
    if updates.device.type == "cpu":
        array = updates.detach().numpy()
        n, d = array.shape
        # The sum is NaN if any entry is NaN (or +inf meets -inf: then numpy's sort, harmless;
        # a float32 overflow gives inf, not NaN).
        with np.errstate(invalid="ignore", over="ignore"):
            has_nan = 1 < n <= _NETWORK_MAX_ROWS and np.isnan(array.sum())
        if 1 < n <= _NETWORK_MAX_ROWS and not has_nan:
            out = np.empty_like(array)
            workers = max(1, torch.get_num_threads()) if array.size >= _NETWORK_PARALLEL_MIN else 1
            block = min(_NETWORK_BLOCK, -(-d // workers))
            in_column_blocks(
                lambda lo, hi: _network_sort(array[:, lo:hi], out[:, lo:hi]), d, block, workers
            )
            return torch.from_numpy(out)
        array = array.copy()
        _sort_in_place(array)
        return torch.from_numpy(array)
    return updates.sort(dim=0).values  # torch too sorts NaN after +inf, and keeps it NaN


def mean_of_rows(ordered: Tensor, lo: int, hi: int) -> Tensor:
    """The mean ``(d,)`` of rows ``lo`` to ``hi - 1`` of ``ordered (n, d)``: the trimmed mean of
    sorted columns.

    On the CPU in numpy, like the sort before it: torch's reduction wakes its OpenMP threads,
    which then spin for milliseconds on the cores that the next call's column threads need.
    """
    if ordered.device.type != "cpu":
        return ordered[lo:hi].mean(dim=0)
    with np.errstate(invalid="ignore", over="ignore"):  # as torch: inf + -inf is NaN
        return torch.from_numpy(ordered.numpy()[lo:hi].mean(axis=0))


def median_of_sorted(ordered: Tensor) -> Tensor:
    """The median ``(d,)`` of sorted columns ``ordered (n, d)``: the middle row, or the mean
    of the two middle rows for even ``n``."""
    n = len(ordered)
    if n % 2:
        return ordered[n // 2].clone()
    return 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def columns_transposed(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``array[:, lo:hi].T`` as a new C-contiguous ``(hi - lo, n)`` array.

    numpy copies a transposed view one element at a time, each read a whole row's stride
    away from the last. Here the columns go in groups of 16 bytes (4 of float32, 2 of
    float64): first the block is copied transposed as ``(groups, n)`` elements of 16 bytes, a
    quarter of the strided reads for float32, then each group is de-interleaved, ``(n, 4) ->
    (4, n)``, in cache. At ``(1000, 9610)`` float32 right after a training round, on one
    thread: 19 -> 11 ms for all columns, and the median 39 -> 35 ms (as in one-thread sweep
    jobs); on two threads the median stayed at 23 to 27 ms, bound by reading the matrix.
    Columns left over after the last whole group, and arrays whose rows are not contiguous,
    are copied the plain way.
    """
    n = array.shape[0]
    size = array.itemsize
    group = 16 // size if 16 % size == 0 else 1
    width = hi - lo
    grouped = width - width % group
    if group == 1 or grouped == 0 or array.strides[1] != size:
        return np.ascontiguousarray(array[:, lo:hi].T)
    out = np.empty((width, n), dtype=array.dtype)
    # complex128 as the 16-byte unit: numpy copies it as raw bytes (no arithmetic, NaN
    # payloads kept) with its size-16 loop (with a void dtype two threads ran no faster than one).
    wide = np.ascontiguousarray(array[:, lo : lo + grouped].view(np.complex128).T)
    interleaved = wide.view(array.dtype).reshape(grouped // group, n, group)
    np.copyto(out[:grouped].reshape(grouped // group, group, n), interleaved.transpose(0, 2, 1))
    out[grouped:] = array[:, lo + grouped : hi].T
    return out


def _select_median(array: np.ndarray) -> np.ndarray:
    """:func:`column_median` of ``array (n, d)`` by selection: numpy's partition at ``n // 2``
    (with one ``kth``, numpy >= 2 hands 32- and 64-bit types to x86-simd-sort's AVX2 / AVX-512
    quickselect: 2.3 ns per value at n = 1000 here, against 9 to 10 ns for int16, which has
    no such path on AVX2; with two ``kth`` numpy takes a path five times slower); for even
    ``n`` the lower middle value is the largest of the lower part.

    From :data:`PARALLEL_MIN` entries (:data:`_BLOCKS_ONE_THREAD_MIN` on one thread) in
    column blocks, on parallel threads: up to :data:`_GATHER_MAX_ROWS` rows numpy's partition
    along axis 0 of each block; above, of blocks copied transposed
    (:func:`columns_transposed`), since numpy's axis-0 partition gathers every column from
    ``n`` strided cache lines (70 against 39 ms on one thread at (1000, 9610)).
    """
    n, d = array.shape
    middle = n // 2

    def middle_of(part: np.ndarray, axis: int) -> np.ndarray:
        along = (slice(None),) * axis  # index along `axis`
        upper = part[(*along, middle)]
        if n % 2:
            return upper
        lower = part[(*along, slice(0, middle))].max(axis=axis)
        with np.errstate(invalid="ignore"):  # -inf + inf is NaN; max propagates NaN, as
            return 0.5 * (lower + upper)  # the sorted order puts NaN last

    workers = max(1, torch.get_num_threads())
    if array.size < (PARALLEL_MIN if workers > 1 else _BLOCKS_ONE_THREAD_MIN):
        return middle_of(np.partition(array, middle, axis=0), axis=0)
    out = np.empty(d, dtype=array.dtype)

    def gathered(lo: int, hi: int) -> None:
        out[lo:hi] = middle_of(np.partition(array[:, lo:hi], middle, axis=0), axis=0)

    def transposed(lo: int, hi: int) -> None:
        block = columns_transposed(array, lo, hi)
        block.partition(middle, axis=1)
        out[lo:hi] = middle_of(block, axis=1)

    work = gathered if n <= _GATHER_MAX_ROWS else transposed
    in_column_blocks(work, d, block_columns(n, d, workers), workers)
    return out


def column_median(updates: Tensor) -> Tensor:
    """Coordinate-wise median of ``updates (n, d)`` -> ``(d,)``; for even ``n`` the mean of the
    two middle values. The same values as the middle of :func:`sort_columns` (NaN sorts last).

    On the CPU above 24 rows by selection instead of a full sort (numpy's quickselect per
    column, see :func:`_select_median`: at ``(1000, 9610)`` about half the time of the sort);
    otherwise (few rows: the sorting network; other devices: torch's sort) the middle of
    :func:`sort_columns`.
    """
    n = len(updates)
    if updates.device.type == "cpu" and n > _NETWORK_MAX_ROWS:
        return torch.from_numpy(_select_median(updates.detach().numpy()))
    return median_of_sorted(sort_columns(updates).to(updates.device))


def row_norms(updates: Tensor) -> Tensor:
    """``(n,)`` Euclidean norms; non-finite rows get ``+inf``."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    return torch.where(torch.isfinite(norms), norms, torch.full_like(norms, torch.inf))


def clip_scales(norms: Tensor, threshold: Tensor | float) -> Tensor:
    """``(n,)`` factors ``min(1, threshold / norm)``, and 0 for a non-finite norm."""
    threshold = torch.as_tensor(threshold, dtype=norms.dtype, device=norms.device)
    scale = torch.clamp(threshold / norms.clamp(min=torch.finfo(norms.dtype).tiny), max=1.0)
    return torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))


def clip_rows(updates: Tensor, threshold: Tensor | float) -> Tensor:
    """Scale every row to norm at most ``threshold`` (a scalar or ``(n,)``); rows already
    inside are unchanged. Non-finite rows become zero (their direction is undefined)."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = clip_scales(norms, threshold)
    return zero_nonfinite(updates, torch.isfinite(norms)) * scale[:, None]


def clipped_mean(updates: Tensor, threshold: Tensor | float) -> Tensor:
    """``mean_i clip(u_i, threshold)`` as one matrix-vector product, without materializing
    the clipped rows: ``(n, d) -> (d,)``. Non-finite rows contribute zero."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = clip_scales(norms, threshold)
    return (scale @ zero_nonfinite(updates, torch.isfinite(norms))) / len(updates)
