"""Local training of many clients at once.

All participating clients start from the global model; their parameters live as rows of one
``(C, d)`` matrix, and every local SGD step of every client is one batched computation:
``torch.func.vmap(torch.func.grad(loss))`` over the stacked parameters. Clients are processed in
chunks of ``chunk_size`` to bound memory. :mod:`robustfl.reference` holds the plain per-client
loop that tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


@dataclass(frozen=True)
class ParamLayout:
    """Where each named parameter of a model lives in the flat vector of length ``d``."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    d: int

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        names, shapes, offsets, d = [], [], [], 0
        for name, param in model.named_parameters():
            names.append(name)
            shapes.append(param.shape)
            offsets.append(d)
            d += param.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), d)

    def flatten(self, model: nn.Module) -> Tensor:
        """The model's parameters as one ``(d,)`` vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat (..., d)`` as ``{name: (..., *shape)}``; writes go through."""
        lead = flat.shape[:-1]
        return {
            name: flat[..., off : off + math.prod(shape)].view(*lead, *shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }


@dataclass
class ClientData:
    """Every client's local data, concatenated client after client.

    Attributes:
        x: ``(N, *input_shape)`` inputs (Byzantine clients' rows already poisoned).
        y: ``(N,)`` labels.
        offsets: ``(K,)`` int64, where client k's rows start.
        sizes: ``(K,)`` int64, how many rows client k holds.
    """

    x: Tensor
    y: Tensor
    offsets: Tensor
    sizes: Tensor

    @classmethod
    def from_parts(cls, parts: list[tuple[Tensor, Tensor]]) -> ClientData:
        sizes = torch.tensor([len(y) for _, y in parts], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        x = torch.cat([x for x, _ in parts])
        y = torch.cat([y for _, y in parts])
        return cls(x, y, offsets, sizes)

    def to(self, device: torch.device) -> ClientData:
        return ClientData(
            self.x.to(device), self.y.to(device), self.offsets.to(device), self.sizes.to(device)
        )


def sample_batch_indices(
    data: ClientData, clients: Tensor, steps: int, batch_size: int, generator: torch.Generator
) -> Tensor:
    """Minibatch row indices ``(C, steps, batch_size)`` into ``data.x`` for ``clients (C,)``.

    Each client walks through fresh random permutations of its own samples (sampling without
    replacement within a pass, a new permutation for every pass), as a shuffling data loader
    would. ``generator`` lives on the CPU; the result is on ``data.x``'s device.
    """
    sizes = data.sizes.cpu()[clients.cpu()]
    offsets = data.offsets.cpu()[clients.cpu()]
    num, longest = len(clients), int(sizes.max())
    draws = steps * batch_size
    passes = math.ceil(draws / int(sizes.min()))
    keys = torch.rand(num, passes, longest, generator=generator)
    keys.masked_fill_(torch.arange(longest) >= sizes[:, None, None], 2.0)  # padding sorts last
    perms = keys.argsort(dim=2)  # (C, passes, longest); first sizes[c] entries permute 0..n_c-1
    position = torch.arange(draws)
    which_pass = position[None, :] // sizes[:, None]
    within = position[None, :] % sizes[:, None]
    local = perms.reshape(num, -1).gather(1, which_pass * longest + within)
    return (offsets[:, None] + local).view(num, steps, batch_size).to(data.x.device)


def make_loss(model: nn.Module):
    """``loss(params, x, y)``: mean cross-entropy of ``model`` with parameters ``params``."""

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss


def mlp_plan(model: nn.Module) -> list[tuple[str, str, bool]] | None:
    """For ``Sequential(Flatten, Linear, ReLU, ..., Linear)`` (the ``logreg`` and ``mlp``
    models), the layers as ``(weight name, bias name, ReLU follows)``; ``None`` otherwise."""
    if not isinstance(model, nn.Sequential) or not len(model):
        return None
    modules = list(model.named_children())
    if not isinstance(modules[0][1], nn.Flatten):
        return None
    plan: list[tuple[str, str, bool]] = []
    for position, (name, module) in enumerate(modules[1:], start=1):
        if isinstance(module, nn.Linear) and module.bias is not None:
            plan.append((f"{name}.weight", f"{name}.bias", False))
        elif isinstance(module, nn.ReLU) and plan and not plan[-1][2] and position > 1:
            plan[-1] = (plan[-1][0], plan[-1][1], True)
        else:
            return None
    return plan if plan and not plan[-1][2] else None


def _reused(scratch: dict[str, Tensor] | None, key: str, shape: tuple[int, ...], like: Tensor):
    """A contiguous ``shape`` tensor: the first rows of ``scratch[key]`` when that has room
    (same trailing shape, dtype and device), else a new one stored there. Reusing memory
    matters on the CPU: fresh memory costs page faults on first touch."""
    held = scratch.get(key) if scratch is not None else None
    if (
        held is None
        or held.shape[0] < shape[0]
        or held.shape[1:] != shape[1:]
        or held.dtype != like.dtype
        or held.device != like.device
    ):
        held = torch.empty(shape, dtype=like.dtype, device=like.device)
        if scratch is not None:
            scratch[key] = held
    return held[: shape[0]]


def _constant(
    scratch: dict[str, Tensor] | None, key: str, shape: tuple[int, ...], like: Tensor, value: float
) -> Tensor:
    """:func:`_reused`, filled with ``value`` only when newly allocated: for tensors that are
    read, never written (the loss gradient's -1s, the bias products' ones)."""
    held = scratch.get(key) if scratch is not None else None
    out = _reused(scratch, key, shape, like)
    if scratch is None or scratch[key] is not held:
        out.fill_(value)
    return out


def mlp_sgd_step(
    plan: list[tuple[str, str, bool]],
    params: dict[str, Tensor],
    buffers: dict[str, Tensor] | None,
    x: Tensor,
    y: Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    dampening: float = 0.0,
    scratch: dict[str, Tensor] | None = None,
) -> None:
    """One SGD step of every client of an MLP, in place, by hand with batched matrix products.

    ``params`` are ``{name: (C, *shape)}`` *contiguous* tensors (weights ``(C, out, in)``),
    ``buffers`` (the momentum) views of any layout; ``x (C, B, ...)``, ``y (C, B)``. The
    gradient of the mean cross-entropy is formed layer by layer with batched products, no
    autograd graph and no vmap, and folded into the parameters in place: the same update as
    ``torch.optim.SGD`` (tested against the per-client loop). ``scratch`` holds the step's
    intermediate tensors between calls (see :func:`_reused`); pass the same dict every step.

    Layouts, each measured at 1,000 clients of a 64-128-10 MLP:
    - Activations are feature-major, ``(C, features, B)``: the products are then ``W @ a``
      with the contiguous weight as the left operand (17 -> 14 ms per step).
    - Without momentum each weight gradient goes straight into its weight with one
      ``baddbmm_`` (weight decay as its ``beta``); with momentum it is written by one ``bmm``
      into a reused buffer and folded into the momentum.
    - Back-propagating through a hidden layer multiplies by ``W^T``, the transposed view as
      the operand: with clients in cache-sized chunks (see :func:`cache_chunk_size`) that
      beat a contiguous copy (140 against 250 us per chunk of 109), though with all 1,000
      clients at once the copy won (2 against 5 ms).
    - The weights must be contiguous across the batch: on views of the flat ``(C, d)`` rows
      (batch stride ``d``) torch copied every weight before each product and ran ``baddbmm_``
      into a view as one ``addmm_`` per client.
    """
    num, batch = x.shape[:2]
    a = x.flatten(2).transpose(1, 2)  # (C, in, B): a view, as good as a contiguous copy here
    inputs = []
    for index, (weight, bias, relu) in enumerate(plan):
        inputs.append(a)
        w = params[weight]
        out = _reused(scratch, f"activation{index}", (num, w.shape[1], batch), w)
        a = torch.bmm(w, a, out=out).add_(params[bias].unsqueeze(2))
        if relu:
            a.relu_()
    # B * d loss / d logits = softmax - onehot; the 1 / B of the mean is folded into the alpha
    # of the products that read it (`scale`), one pass over the logits fewer.
    delta = torch.softmax(a, dim=1)
    target = y.unsqueeze(1)
    delta.scatter_add_(1, target, _constant(scratch, "minus_one", target.shape, a, -1.0))
    scale = 1.0 / batch
    # Bias gradients as one matrix-vector product with ones over the flattened (C * out, B)
    # deltas: faster here than sum(dim=2) (76 against 85 us at out = 128, 14 against 25 us at
    # out = 10, per chunk of 100), and the bias update folds into it.
    ones = _constant(scratch, "ones", (batch,), a, 1.0)
    for index in range(len(plan) - 1, -1, -1):
        weight, bias, _ = plan[index]
        w, below = params[weight], inputs[index]
        upstream = None
        if index:  # back-propagate through the old weights, before they change
            grad_below = _reused(scratch, f"grad{index}", (num, w.shape[2], batch), w)
            torch.baddbmm(
                grad_below, w.transpose(1, 2), delta, beta=0.0, alpha=scale, out=grad_below
            )
            # ReLU's backward as one fused kernel (4x faster here than multiplying by a mask).
            upstream = torch.ops.aten.threshold_backward.grad_input(
                grad_below, below, 0.0, grad_input=grad_below
            )
        below_t = below.transpose(1, 2)  # (C, B, in)
        flat_delta = delta.view(-1, batch)  # (C * out, B); `delta` is contiguous
        if buffers is None:  # theta <- (1 - lr wd) theta - lr g
            decay = 1.0 - lr * weight_decay
            w.baddbmm_(delta, below_t, beta=decay, alpha=-lr * scale)
            params[bias].view(-1).addmv_(flat_delta, ones, beta=decay, alpha=-lr * scale)
        else:  # buf <- m buf + (1 - damp) (g + wd theta); theta <- theta - lr buf
            weight_grad = _reused(scratch, f"weight_grad{index}", w.shape, w)
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


_CHUNK_WEIGHT_BYTES = 4 << 20
_CHUNK_ABOVE_BYTES = 16 << 20


def cache_chunk_size(num: int, d: int, element_size: int = 4) -> int:
    """Clients per chunk of the CPU MLP path: all ``num`` while their weights take at most
    16 MiB, else equal chunks of at most about 4 MiB of weights.

    Each local step reads every weight twice and writes it once, so with all clients at once a
    step streams the whole ``(num, d)`` weight set through memory three times, and memory is
    what limits the step at 1,000 clients; a chunk that stays in the cache runs all its steps
    from there. At 1,000 clients of a 64-128-10 MLP (d = 9,610; 10 chunks of 100): 102 -> 65
    ms per round's training (chunks of 32 to 200 tried, best 100 to 143). Below 16 MiB the
    set stays in the cache anyway and chunks only add calls: 14 clients of d = 101,770 (5.7
    MiB, one step per round) ran 20 % slower in two chunks.
    """
    total = num * d * element_size
    if total <= _CHUNK_ABOVE_BYTES:
        return num
    chunks = -(-total // _CHUNK_WEIGHT_BYTES)
    return -(-num // chunks)


class LocalTrainer:
    """Local SGD (with optional momentum and weight decay) for many clients at once.

    Args:
        model: the architecture; its own parameter values are not used.
        layout: the model's :class:`ParamLayout`.
        lr, momentum, weight_decay, dampening: the client optimizer, as ``torch.optim.SGD``
            defines them (``buf = momentum * buf + (1 - dampening) * (g + wd * theta)``;
            ``theta -= lr * buf``), with the buffer starting at zero: unlike
            ``torch.optim.SGD``, which starts it at the first gradient, the first step is
            dampened too. ``dampening = momentum`` gives the exponential moving average of the
            gradients that ByzFL's workers send.
        chunk_size: clients trained together; 0 chooses: for an MLP on the CPU, cache-sized
            chunks when the clients' weights exceed 16 MiB (:func:`cache_chunk_size`),
            otherwise all at once.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        chunk_size: int = 0,
        dampening: float = 0.0,
    ) -> None:
        self.layout = layout
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.dampening = dampening
        self.chunk_size = chunk_size
        # MLPs take the hand-written in-place step (faster); other models vmap(grad(loss)).
        self.mlp_plan = mlp_plan(model)
        # Contiguous parameter copies and intermediate tensors of the MLP path, grown on
        # demand and reused across chunks and rounds (fresh memory costs page faults).
        self._scratch: dict[str, Tensor] = {}
        self._grads = vmap(grad(make_loss(model)), in_dims=(0, 0, 0))

    def train(
        self,
        global_params: Tensor,
        x: Tensor,
        y: Tensor,
        batches: Tensor,
        momentum_rows: Tensor | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run every client's local steps and return their updates.

        Args:
            global_params: ``(d,)`` the global model.
            x, y: all clients' data (see :class:`ClientData`).
            batches: ``(C, steps, B)`` row indices of each client's minibatches.
            momentum_rows: ``(C, d)`` the clients' momentum buffers, updated in place
                (a fresh zero buffer is used when ``momentum > 0`` and this is ``None``).
            out: optional ``(C, d)`` buffer for the result. Reusing one across rounds avoids
                allocating (and page-faulting) ``C * d`` floats every round.

        Returns:
            ``(C, d)`` updates ``theta_local - theta_global`` (``out`` when given).
        """
        num = len(batches)
        if out is None:
            out = torch.empty(
                num, self.layout.d, dtype=global_params.dtype, device=global_params.device
            )
        chunk = self.chunk_size or num
        if not self.chunk_size and self.mlp_plan is not None and global_params.device.type == "cpu":
            chunk = cache_chunk_size(num, self.layout.d, global_params.element_size())
        for start in range(0, num, chunk):
            stop = min(start + chunk, num)
            bufs = momentum_rows[start:stop] if momentum_rows is not None else None
            self._train_chunk(global_params, x, y, batches[start:stop], bufs, out[start:stop])
        return out

    def _train_mlp_chunk(self, global_params, x, y, batches, bufs, theta) -> None:
        """The MLP path of :meth:`_train_chunk`: the steps run on contiguous per-layer copies of
        the parameters (see :func:`mlp_sgd_step`), written into the rows ``theta`` at the end."""
        num, steps, _ = batches.shape
        start = self.layout.unflatten(global_params.unsqueeze(0))  # {name: (1, *shape)}
        params = {}
        for name, value in start.items():
            params[name] = _reused(self._scratch, name, (num, *value.shape[1:]), global_params)
            params[name].copy_(value.expand(num, *value.shape[1:]))
        buffers = self.layout.unflatten(bufs) if self.momentum else None
        # One gather for all steps of the chunk (index_select: 3x faster than x[rows] here);
        # with the loss gradient's reused -1s, 55 -> 53 ms a round's training at 1,000 clients.
        flat_rows = batches.reshape(-1)
        inputs = x.index_select(0, flat_rows).view(*batches.shape, *x.shape[1:])
        labels = y.index_select(0, flat_rows).view(batches.shape)
        for step in range(steps):
            mlp_sgd_step(
                self.mlp_plan,
                params,
                buffers,
                inputs[:, step],
                labels[:, step],
                self.lr,
                self.momentum,
                self.weight_decay,
                self.dampening,
                self._scratch,
            )
        for name, view in self.layout.unflatten(theta).items():
            torch.sub(params[name], start[name], out=view)  # the update, in one pass

    def _train_chunk(self, global_params, x, y, batches, bufs, theta) -> None:
        """Train the clients of one chunk in place: ``theta (c, d)`` starts as the global
        model and ends as the updates. The vmap path works on per-parameter views of the flat
        rows, so no ``(c, d)`` temporary is allocated per step."""
        if self.momentum and bufs is None:  # a fresh optimizer (e.g. the server's root update)
            bufs = torch.zeros_like(theta)
        if self.mlp_plan is not None:
            self._train_mlp_chunk(global_params, x, y, batches, bufs, theta)
            return
        num, steps, _ = batches.shape
        theta.copy_(global_params.expand(num, -1))
        params = self.layout.unflatten(theta)
        buffers = self.layout.unflatten(bufs) if self.momentum else None
        for step in range(steps):
            rows = batches[:, step]
            grads = self._grads(params, x[rows], y[rows])
            for name in self.layout.names:
                g = grads[name]
                if self.weight_decay:
                    g.add_(params[name], alpha=self.weight_decay)
                if self.momentum:
                    g = buffers[name].mul_(self.momentum).add_(g, alpha=1.0 - self.dampening)
                params[name].add_(g, alpha=-self.lr)
        theta.sub_(global_params)


def evaluate(
    model: nn.Module,
    layout: ParamLayout,
    params: Tensor,
    x: Tensor,
    y: Tensor,
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the model with flat ``params (d,)`` on ``x, y``."""
    named = layout.unflatten(params)
    correct, total_loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = functional_call(model, named, (x[start : start + batch_size],))
            target = y[start : start + batch_size]
            total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    n = max(len(y), 1)
    return correct / n, total_loss / n
