"""Fast paths, and the one place that chooses them.

Each function here computes what its plain torch definition computes; the definition is the
branch taken on other devices, and ``tests/test_kernels.py`` checks every fast path against
it (ties, NaN, +-inf, float32 cancellation). Attacks and defenses are written with these
primitives, so their modules read as their papers' definitions.

| primitive | plain definition | fast path (CPU, float32 / float64) |
|---|---|---|
| :func:`sort_columns` | ``torch.sort(x, dim=0).values`` | numpy's sort, or a sorting network up to 24 rows |
| :func:`column_median` | the middle of :func:`sort_columns` | numpy's selection |
| :func:`mean_and_std` | ``x.mean(0)``, ``x.std(0)`` | two passes over cache-sized row blocks (any CPU dtype) |
| :func:`centered_products` | ``c @ c.T``, ``c = (x - center) / scale`` | accumulated over cache-sized column blocks (any CPU dtype) |
| local SGD of an MLP | ``vmap(grad(loss))`` (:mod:`robustfl.training`) | batched products by hand (:mod:`.mlp`) |
| local SGD of a CNN | ``vmap(grad(loss))`` | client by client on parallel threads (:mod:`.conv`) |
| evaluating a CNN | the model, batches of 4096 | its :func:`.conv.fast_twin`, batches of 128 |
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from robustfl.kernels import columns, statistics
from robustfl.kernels.conv import fast_twin, has_convolutions
from robustfl.kernels.mlp import mlp_plan

TrainingPath = Literal["mlp", "clients", "vmap"]


def _numpy_applies(x: Tensor) -> bool:
    """numpy's column kernels apply: a float32 or float64 matrix on the CPU."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def sort_columns(x: Tensor) -> Tensor:
    """``x (n, d)`` with each column sorted (each coordinate independently), NaN last:
    ``torch.sort(x, dim=0).values``."""
    if _numpy_applies(x):
        return torch.from_numpy(columns.sort(x.detach().numpy()))
    return x.sort(dim=0).values


def median_of_sorted(ordered: Tensor) -> Tensor:
    """The middle row of sorted columns ``(n, d)``, or the mean of the two middle rows."""
    n = len(ordered)
    return ordered[n // 2].clone() if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def column_median(x: Tensor) -> Tensor:
    """Coordinate-wise median ``(d,)`` of ``x (n, d)``: :func:`median_of_sorted` of
    :func:`sort_columns` (NaN counts as the largest value)."""
    if _numpy_applies(x):
        return torch.from_numpy(columns.median(x.detach().numpy()))
    return median_of_sorted(x.sort(dim=0).values)


def mean_and_std(x: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and standard deviation ``(d,)`` of ``x (m, d)``: ``x.mean(0)`` and
    ``x.std(0)`` (``unbiased``: divide by ``m - 1``), a zero std for one row."""
    if len(x) < 2:
        return x.mean(dim=0), torch.zeros_like(x[0])
    if x.device.type == "cpu":
        return statistics.mean_and_std(x, unbiased)
    return x.mean(dim=0), x.std(dim=0, unbiased=unbiased)


#: Entries per column block of :func:`centered_products` on the CPU (4 MiB of float32).
PRODUCT_BLOCK_ENTRIES = 1 << 20


def centered_products(x: Tensor, center: Tensor, scale: float = 1.0) -> Tensor:
    """``(n, n)`` inner products of the rows of ``x (n, d)`` centred on ``center (d,)`` and
    divided by ``scale``: ``c @ c.T`` with ``c = (x - center) / scale``. On the CPU the
    centred rows are made and multiplied a block of columns at a time, so the centred copy
    stays in the cache instead of being written to fresh memory."""
    n, d = x.shape
    step = max(256, PRODUCT_BLOCK_ENTRIES // max(1, n))
    if x.device.type != "cpu" or d <= step:
        centered = x - center
        if scale != 1.0:
            centered.mul_(1.0 / scale)
        return centered @ centered.T
    out = torch.zeros(n, n, dtype=x.dtype)
    for lo in range(0, d, step):
        part = x[:, lo : lo + step] - center[lo : lo + step]
        if scale != 1.0:
            part.mul_(1.0 / scale)
        out.addmm_(part, part.T)
    return out


def training_path(model: nn.Module, device: torch.device) -> TrainingPath:
    """How :class:`robustfl.training.LocalTrainer` runs local SGD for ``model``: ``"mlp"``,
    the hand-written step, for ``Sequential(Flatten, Linear, ReLU, ..., Linear)``; ``"clients"``,
    client by client on parallel threads, for convolutional models on the CPU; ``"vmap"``,
    the plain definition, otherwise (convolutional models on a GPU included)."""
    if mlp_plan(model) is not None:
        return "mlp"
    if device.type == "cpu" and has_convolutions(model):
        return "clients"
    return "vmap"


def evaluation_plan(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """The module and batch size :func:`robustfl.training.evaluate` runs ``model`` with, a copy
    in evaluation mode (dropout off): on the CPU, a convolutional model's
    :func:`~robustfl.kernels.conv.fast_twin` (the same function, same parameter names) in
    batches of 128, whose activations stay in cache; otherwise ``model`` in batches of 4096."""
    if device.type == "cpu" and has_convolutions(model):
        return fast_twin(model).eval(), 128
    return copy.deepcopy(model).eval(), 4096


__all__ = [
    "centered_products",
    "column_median",
    "evaluation_plan",
    "mean_and_std",
    "median_of_sorted",
    "sort_columns",
    "training_path",
]
