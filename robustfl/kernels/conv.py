"""Local training of convolutional models on the CPU: clients side by side, one per thread.

The plain definition is ``vmap(grad(loss))`` over the stacked parameters
(:class:`robustfl.training.LocalTrainer`). On the CPU that turns every convolution into a
grouped one over all clients, whose activations (tens of MB) leave the cache; one client's
step at batch 32 keeps them in it, but small convolutions gain little from a second thread
inside one operation. So each of ``torch.get_num_threads()`` threads trains whole clients,
one torch thread each, on a twin of the model (:func:`fast_twin`) that computes the same
function faster:

- every convolution's output is channels-last (oneDNN keeps that layout from a channels-last
  input, but returns NCHW for a few input channels, as in an image model's first layer), so
  that pooling runs on channels-last tensors, where CPU max pooling is an order of magnitude
  faster than in NCHW;
- ``ReLU`` then ``MaxPool2d`` becomes ``MaxPool2d`` then ``ReLU``: the same values, and the
  same gradients but for ties between positive values, through a tensor four times smaller.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import torch
from torch import Tensor, nn


class ChannelsLastConv2d(nn.Conv2d):
    """:class:`nn.Conv2d` whose output is in channels-last memory format."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).contiguous(memory_format=torch.channels_last)


def fast_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` computing the same function faster on the CPU (see the module
    docstring), with the same parameter names in the same order."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for child in module.children():
            if type(child) is nn.Conv2d:
                child.__class__ = ChannelsLastConv2d  # the same module, another forward
        if isinstance(module, nn.Sequential):  # neither has parameters: names stay valid
            slots = module._modules
            for a, b in pairwise(list(slots)):
                if type(slots[a]) is nn.ReLU and type(slots[b]) is nn.MaxPool2d:
                    slots[a], slots[b] = slots[b], slots[a]
    return twin


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


_pools: dict[int, ThreadPoolExecutor] = {}


os.register_at_fork(after_in_child=_pools.clear)  # a child inherits no threads of the parent


def for_each_client(work: Callable[[int], None], num: int) -> None:
    """``work(c)`` for ``c`` in ``range(num)`` on ``torch.get_num_threads()`` threads, each
    running torch with one thread of its own; errors propagate."""
    workers = min(max(1, torch.get_num_threads()), num)
    if workers == 1:
        for c in range(num):
            work(c)
        return
    pool = _pools.get(workers)
    if pool is None:
        pool = _pools[workers] = ThreadPoolExecutor(
            workers, "robustfl-clients", initializer=torch.set_num_threads, initargs=(1,)
        )
    for future in [pool.submit(work, c) for c in range(num)]:
        future.result()
