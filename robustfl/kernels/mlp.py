"""Local SGD of an MLP for many clients at once, by hand with batched matrix products.

The plain definition is ``vmap(grad(loss))`` over the stacked parameters
(:class:`robustfl.training.LocalTrainer`); for ``Sequential(Flatten, Linear, ReLU, ...,
Linear)`` models the step below computes the same update without autograd or vmap, in place,
and is tested equal to the per-client ``torch.optim.SGD`` loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: A plan: per linear layer, ``(weight name, bias name, a ReLU follows)``.
Plan = list[tuple[str, str, bool]]


def mlp_plan(model: nn.Module) -> Plan | None:
    """The layers of ``Sequential(Flatten, Linear, ReLU, ..., Linear)`` (the ``logreg`` and
    ``mlp`` models) as a :data:`Plan`; ``None`` for any other model."""
    if not isinstance(model, nn.Sequential) or not len(model):
        return None
    modules = list(model.named_children())
    if not isinstance(modules[0][1], nn.Flatten):
        return None
    plan: Plan = []
    for position, (name, module) in enumerate(modules[1:], start=1):
        if isinstance(module, nn.Linear) and module.bias is not None:
            plan.append((f"{name}.weight", f"{name}.bias", False))
        elif isinstance(module, nn.ReLU) and plan and not plan[-1][2] and position > 1:
            plan[-1] = (plan[-1][0], plan[-1][1], True)
        else:
            return None
    return plan if plan and not plan[-1][2] else None


class Scratch(dict):
    """Intermediate tensors kept between steps: fresh memory costs page faults on the CPU."""

    def take(self, key: str, shape: tuple[int, ...], like: Tensor, fill: float | None = None):
        """A contiguous ``shape`` tensor: the first rows of the one kept under ``key`` when it
        has room, else a new one kept there. ``fill`` fills a new one (constants)."""
        held = self.get(key)
        if (
            held is None
            or held.shape[0] < shape[0]
            or held.shape[1:] != shape[1:]
            or held.dtype != like.dtype
            or held.device != like.device
        ):
            held = self[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
            if fill is not None:
                held.fill_(fill)
        return held[: shape[0]]


def mlp_sgd_step(
    plan: Plan,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor] | None,
    x: Tensor,
    y: Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    dampening: float,
    scratch: Scratch,
) -> None:
    """One SGD step of every client, in place: ``torch.optim.SGD``'s update of the mean
    cross-entropy on the batch ``x (C, B, ...)``, ``y (C, B)``.

    ``params`` are ``{name: (C, *shape)}`` contiguous tensors (weights ``(C, out, in)``),
    ``buffers`` the momentum (any layout). Activations are kept feature-major, ``(C, features,
    B)``, so that every product has the contiguous weight as its left operand; the gradient of
    each layer goes straight into its weight (``baddbmm_``, weight decay as its ``beta``)
    without momentum, or into the momentum buffer with it.
    """
    num, batch = x.shape[:2]
    a = x.flatten(2).transpose(1, 2)  # (C, in, B)
    inputs = []
    for index, (weight, bias, relu) in enumerate(plan):
        inputs.append(a)
        w = params[weight]
        out = scratch.take(f"activation{index}", (num, w.shape[1], batch), w)
        a = torch.bmm(w, a, out=out).add_(params[bias].unsqueeze(2))
        if relu:
            a.relu_()
    # B * dloss/dlogits = softmax - onehot; the 1 / B is folded into the products that read it.
    delta = torch.softmax(a, dim=1)
    target = y.unsqueeze(1)
    delta.scatter_add_(1, target, scratch.take("minus_one", target.shape, a, fill=-1.0))
    scale = 1.0 / batch
    ones = scratch.take("ones", (batch,), a, fill=1.0)  # bias gradients as products with ones
    for index in range(len(plan) - 1, -1, -1):
        weight, bias, _ = plan[index]
        w, below = params[weight], inputs[index]
        upstream = None
        if index:  # back-propagate through the old weights, before they change
            grad_below = scratch.take(f"grad{index}", (num, w.shape[2], batch), w)
            torch.baddbmm(
                grad_below, w.transpose(1, 2), delta, beta=0.0, alpha=scale, out=grad_below
            )
            upstream = torch.ops.aten.threshold_backward.grad_input(  # ReLU's backward, fused
                grad_below, below, 0.0, grad_input=grad_below
            )
        below_t = below.transpose(1, 2)  # (C, B, in)
        flat_delta = delta.view(-1, batch)  # (C * out, B)
        if buffers is None:  # theta <- (1 - lr wd) theta - lr g
            decay = 1.0 - lr * weight_decay
            w.baddbmm_(delta, below_t, beta=decay, alpha=-lr * scale)
            params[bias].view(-1).addmv_(flat_delta, ones, beta=decay, alpha=-lr * scale)
        else:  # buf <- m buf + (1 - damp) (g + wd theta); theta <- theta - lr buf
            weight_grad = scratch.take(f"weight_grad{index}", w.shape, w)
            torch.bmm(delta, below_t, out=weight_grad)
            bias_grad = torch.mv(flat_delta, ones).view(num, -1)
            for name, gradient in ((weight, weight_grad), (bias, bias_grad)):
                param = params[name]
                buf = buffers[name].mul_(momentum).add_(gradient, alpha=(1.0 - dampening) * scale)
                if weight_decay:
                    buf.add_(param, alpha=weight_decay * (1.0 - dampening))
                param.add_(buf, alpha=-lr)
        scale = 1.0  # `upstream` carries the 1 / B already
        delta = upstream


#: Above this many bytes of clients' weights, the CPU path trains in chunks ...
CHUNK_ABOVE_BYTES = 16 << 20
#: ... of about this many bytes, which stay in the cache through all local steps.
CHUNK_BYTES = 4 << 20


def cache_chunk_size(num: int, d: int, element_size: int = 4) -> int:
    """Clients per chunk on the CPU: all ``num`` while their weights take at most 16 MiB, else
    equal chunks of at most about 4 MiB. Each step reads every weight twice and writes it
    once; a chunk that stays in the cache runs all its steps from there."""
    total = num * d * element_size
    if total <= CHUNK_ABOVE_BYTES:
        return num
    chunks = -(-total // CHUNK_BYTES)
    return -(-num // chunks)
