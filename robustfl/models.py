"""Models. All are pure functions of their parameters (no BatchNorm running statistics) and,
in training, of the dropout masks they are given (:class:`MaskedDropout`), so
:func:`torch.func.functional_call` and :func:`torch.vmap` can train many clients at once.

Each builder takes the input shape (without the batch dimension) and the number of classes
and is constructed from config with ``_partial_=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

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


class MaskedDropout(nn.Module):
    """Dropout (Srivastava et al. 2014) with the mask given rather than drawn inside.

    In training mode the output is ``x * mask``, with ``mask`` the module's buffer of that
    name, whose entries are 0 or ``1 / (1 - p)``; in evaluation mode, ``x``. Local training
    sets the buffer for every client and step from that client's own generator
    (:class:`robustfl.training.DropoutMasks`), so training stays a function of the
    parameters, the minibatch and a seed: reproducible, and the same on every training path
    (threads, ``vmap``, the per-client reference loop). With the mask drawn as in
    :meth:`draw`, the output equals ``torch.nn.functional.dropout`` (or ``dropout2d``) run
    with the same seed.

    Args:
        p: the probability of zeroing an element, or a channel.
        features: the shape of one sample's input, ``(F,)`` or ``(C, H, W)``.
        channelwise: on ``(C, H, W)`` inputs, zero whole channels (``nn.Dropout2d``); on
            ``(F,)`` inputs drop element by element either way, as ``nn.Dropout2d`` did before
            PyTorch 1.12.
    """

    def __init__(self, p: float, features: Sequence[int], channelwise: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout p={p} is invalid: use 0 <= p < 1.")
        self.p, self.channelwise = float(p), channelwise
        shape = tuple(int(n) for n in features)
        #: one sample's mask shape: ``(C, 1, ..., 1)`` when channelwise on images, else ``features``
        self.sample_mask_shape = (shape[0], *(1,) * (len(shape) - 1)) if channelwise else shape
        self.register_buffer("mask", torch.empty(0), persistent=False)

    def draw(self, batch: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """A ``(batch, *sample_mask_shape)`` mask: Bernoulli(1 - p) draws from ``generator``
        (on its device), divided by 1 - p."""
        keep = 1.0 - self.p
        shape = (batch, *self.sample_mask_shape)
        mask = torch.empty(shape, dtype=dtype, device=generator.device)
        return mask.bernoulli_(keep, generator=generator).div_(keep)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        expected = (len(x), *self.sample_mask_shape)
        if self.mask.shape != expected:
            raise RuntimeError(
                f"MaskedDropout in training mode needs a mask of shape {expected} for its input "
                f"{tuple(x.shape)}, has {tuple(self.mask.shape)}: local training sets it "
                "(robustfl.training.DropoutMasks); call model.eval() to evaluate."
            )
        return x * self.mask

    def extra_repr(self) -> str:
        return f"p={self.p}, channelwise={self.channelwise}"


def karimireddy_cnn(
    input_shape: Sequence[int], num_classes: int, dropout: bool = True
) -> nn.Module:
    """The MNIST network of Karimireddy, He and Jaggi's code (``codes/tasks/mnist.py`` of
    ``epfml/byzantine-robust-noniid-optimizer``, as in their decentralized follow-up): PyTorch's
    MNIST example without the ReLU after the second convolution, ``Conv3x3(32) -> ReLU ->
    Conv3x3(64) -> MaxPool2 -> Dropout2d(0.25) -> Flatten -> Linear(128) -> ReLU ->
    Dropout2d(0.5) -> Linear``, no padding; 1,199,882 parameters on ``(1, 28, 28)`` input.
    Their ``nn.Dropout2d`` zeroes whole channels after pooling and, on the hidden layer's
    ``(N, 128)`` output, single units (PyTorch before 1.12): :class:`MaskedDropout` layers,
    left out with ``dropout=False``."""
    shape = list(input_shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        shape = [1, math.isqrt(shape[0]), math.isqrt(shape[0])]
    if len(shape) != 3 or shape[1] < 6 or shape[2] < 6:
        raise ConfigError(
            f"model=karimireddy_cnn needs image input (C, H, W) of at least 6 x 6 pixels; the "
            f"data set's inputs have shape {tuple(input_shape)}. Use model=mlp or model=logreg."
        )
    height, width = (shape[1] - 4) // 2, (shape[2] - 4) // 2
    layers: list[nn.Module] = [nn.Unflatten(1, shape)] if len(input_shape) == 1 else []
    layers += [nn.Conv2d(shape[0], 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.MaxPool2d(2)]
    layers += [MaskedDropout(0.25, (64, height, width), channelwise=True)] if dropout else []
    layers += [nn.Flatten(), nn.Linear(64 * height * width, 128), nn.ReLU()]
    layers += [MaskedDropout(0.5, (128,), channelwise=True)] if dropout else []
    layers.append(nn.Linear(128, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """He et al.'s CIFAR residual block: ``conv3x3 -> GroupNorm -> ReLU -> conv3x3 ->
    GroupNorm``, plus the parameter-free shortcut ("option A": the input subsampled by the
    stride and zero-padded to the new channels), then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, outputs)
        self.stride, self.pad = stride, outputs - inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = nn.functional.pad(
                shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )
        return torch.relu(out + shortcut)


def resnet20(
    input_shape: Sequence[int], num_classes: int, width: int = 16, groups: int = 2
) -> nn.Module:
    """ResNet-20 for CIFAR (He, Zhang, Ren and Sun 2016, section 4.2): a 3x3 convolution of
    ``width`` channels, three stages of three :class:`BasicBlock` (``width``, ``2 width``,
    ``4 width`` channels; the last two start with stride 2), global average pooling and a
    linear head: about 0.27M parameters at ``width = 16``. GroupNorm with ``groups`` groups
    replaces BatchNorm, so that the model is a pure function of its parameters (no running
    statistics), as federated training with ``torch.func`` needs."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ConfigError(
            f"model=resnet20 needs image input (C, H, W); the data set's inputs have shape "
            f"{shape}. Use dataset=cifar10 or dataset=synthetic_cifar."
        )
    if width < 1 or groups < 1 or width % groups:
        raise ConfigError(
            f"model.width={width}, model.groups={groups}: need width >= 1 and groups dividing "
            "width (and so 2 width and 4 width)."
        )
    layers: list[nn.Module] = [
        nn.Conv2d(shape[0], width, 3, padding=1, bias=False),
        nn.GroupNorm(groups, width),
        nn.ReLU(),
    ]
    inputs = width
    for stage, outputs in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            stride = 2 if stage and not block else 1
            layers.append(BasicBlock(inputs, outputs, stride, groups))
            inputs = outputs
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, num_classes)]
    return nn.Sequential(*layers)


def init_model(builder, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build a model with parameters drawn from ``seed`` (without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(input_shape=tuple(input_shape), num_classes=num_classes)
