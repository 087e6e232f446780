"""Models. All are pure functions of their parameters (no BatchNorm running statistics), so
:func:`torch.func.functional_call` and :func:`torch.vmap` can train many clients at once.

Each builder takes the input shape (without the batch dimension) and the number of classes
and is constructed from config with ``_partial_=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustfl.errors import ConfigError


def logreg(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: ``Flatten -> Linear``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``."""
    widths = list(hidden)
    if any(int(w) < 1 for w in widths):
        raise ConfigError(f"model.hidden={widths} is invalid: every width must be >= 1.")
    layers: list[nn.Module] = [nn.Flatten()]
    previous = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(previous, int(width)), nn.ReLU()]
        previous = int(width)
    layers.append(nn.Linear(previous, num_classes))
    return nn.Sequential(*layers)


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int | Sequence[int] = 128,
    groups: int = 0,
) -> nn.Module:
    """``(Conv3x3 -> [GroupNorm] -> ReLU -> MaxPool2)`` per entry of ``channels``, then
    ``Linear(h) -> ReLU`` per hidden width (``hidden``: one width or a list, as for ``mlp``)
    and a linear head. Needs image input ``(C, H, W)``; flat input of a square number of
    features is read as one channel."""
    widths = [int(hidden)] if isinstance(hidden, int) else [int(h) for h in hidden]
    if any(w < 1 for w in widths):
        raise ConfigError(f"model.hidden={hidden} is invalid: every width must be >= 1.")
    shape = list(input_shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        shape = [1, side, side]
    if len(shape) != 3:
        raise ConfigError(
            f"model=cnn needs image input (C, H, W); the data set's inputs have shape "
            f"{tuple(input_shape)}. Use model=mlp or model=logreg."
        )
    if groups < 0 or any(groups and int(c) % groups for c in channels):
        raise ConfigError(
            f"model.groups={groups} is invalid: use 0 (no normalization) or a divisor of every "
            f"entry of model.channels={list(channels)}."
        )
    layers: list[nn.Module] = [nn.Unflatten(1, shape)] if len(input_shape) == 1 else []
    previous = shape[0]
    side_h, side_w = shape[1], shape[2]
    for width in channels:
        layers.append(nn.Conv2d(previous, int(width), kernel_size=3, padding=1))
        if groups:
            layers.append(nn.GroupNorm(groups, int(width)))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        previous, side_h, side_w = int(width), side_h // 2, side_w // 2
        if side_h < 1 or side_w < 1:
            raise ConfigError(
                f"model.channels={list(channels)} has more pooling stages than the input "
                f"{tuple(shape)} allows: use fewer entries."
            )
    layers.append(nn.Flatten())
    features = previous * side_h * side_w
    for width in widths:
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def init_model(builder, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build a model with parameters drawn from ``seed`` (without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(input_shape=tuple(input_shape), num_classes=num_classes)
