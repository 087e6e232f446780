"""Local training of many clients at once.

All participating clients start from the global model; their parameters live as rows of one
``(C, d)`` matrix, and every local SGD step of every client is one batched computation:
``torch.func.vmap(torch.func.grad(loss))`` over the stacked parameters (MLPs take the
hand-written step of :mod:`robustfl.kernels.mlp`). Clients are processed in chunks of
``chunk_size`` to bound memory. :mod:`robustfl.reference` holds the plain per-client loop
that tests compare against.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from robustfl.kernels import TrainingPath, training_path
from robustfl.kernels.conv import fast_twin, for_each_client
from robustfl.kernels.mlp import Scratch, cache_chunk_size, mlp_plan, mlp_sgd_step
from robustfl.models import MaskedDropout


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


class DropoutMasks:
    """The masks of a model's :class:`~robustfl.models.MaskedDropout` layers in local training.

    Client ``c`` draws its masks from its own generator, seeded with ``seeds[c]`` (one seed per
    client and round, from the run's ``"dropout"`` stream), step after step and, within a
    step, layer after layer in forward order. The masks so depend on neither the training path
    nor the chunking nor the threads.

    Args:
        model: the architecture; its dropout layers are found by type.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = tuple(
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, MaskedDropout)
        )

    def __bool__(self) -> bool:
        return bool(self.layers)

    @staticmethod
    def generator(seed: Tensor | int, device: torch.device) -> torch.Generator:
        """A client's generator on ``device``, from its seed."""
        return torch.Generator(device=device).manual_seed(int(seed))

    def draw(self, batch: int, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        """One step's masks ``{"<layer>.mask": (batch, *mask shape)}`` from ``generator``."""
        return {f"{name}.mask": layer.draw(batch, generator, dtype) for name, layer in self.layers}

    def install(self, masks: dict[str, Tensor]) -> None:
        """Set the layers' ``mask`` buffers to ``masks`` (from :meth:`draw`)."""
        for name, layer in self.layers:
            layer.mask = masks[f"{name}.mask"]

    def seeds(self, num: int, generator: torch.Generator) -> Tensor | None:
        """``num`` client seeds ``(num,)`` from ``generator``, or ``None`` for a model without
        dropout (the stream is then left untouched)."""
        if not self.layers:
            return None
        return torch.randint(2**62, (num,), generator=generator, device=generator.device)


def make_loss(model: nn.Module):
    """``loss(params, masks, x, y)``: mean cross-entropy of ``model`` with parameters
    ``params`` and the dropout masks ``masks`` (``{}`` for a model without dropout)."""

    def loss(params: dict[str, Tensor], masks: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, masks), (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss


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
        path: ``"mlp"``, ``"clients"`` or ``"vmap"`` (see
            :func:`robustfl.kernels.training_path`, which chooses when ``None``).

    A model with :class:`~robustfl.models.MaskedDropout` layers trains with the masks of
    :class:`DropoutMasks`, from one seed per client (``dropout_seeds`` of :meth:`train`).
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
        path: TrainingPath | None = None,
    ) -> None:
        self.layout = layout
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.dampening = dampening
        self.chunk_size = chunk_size
        device = next(model.parameters()).device
        model.train()  # dropout acts (before the twin is copied); evaluation has its own copies
        self.dropout = DropoutMasks(model)
        self.path = path or training_path(model, device)  # robustfl.kernels chooses
        self.mlp_plan = mlp_plan(model) if self.path == "mlp" else None
        self._scratch = Scratch()  # the MLP step's tensors, reused across chunks and rounds
        self._grads = vmap(grad(make_loss(model)), in_dims=(0, 0, 0, 0))
        # the "clients" path: each thread with a copy of the model (functional_call swaps
        # parameters on the module object)
        self._twin = fast_twin(model) if self.path == "clients" else None
        self._per_thread = threading.local()

    def train(
        self,
        global_params: Tensor,
        x: Tensor,
        y: Tensor,
        batches: Tensor,
        momentum_rows: Tensor | None = None,
        out: Tensor | None = None,
        dropout_seeds: Tensor | None = None,
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
            dropout_seeds: ``(C,)`` the clients' dropout seeds this round
                (:meth:`DropoutMasks.seeds`); required exactly when the model has dropout.

        Returns:
            ``(C, d)`` updates ``theta_local - theta_global`` (``out`` when given).
        """
        num = len(batches)
        if bool(self.dropout) != (dropout_seeds is not None):
            raise ValueError(
                f"dropout_seeds: the model has {len(self.dropout.layers)} dropout layers; pass "
                "one seed per client exactly when it has some (LocalTrainer.dropout.seeds)."
            )
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
            seeds = dropout_seeds[start:stop] if dropout_seeds is not None else None
            self._train_chunk(
                global_params, x, y, batches[start:stop], bufs, out[start:stop], seeds
            )
        return out

    def _train_mlp_chunk(self, global_params, x, y, batches, bufs, theta) -> None:
        """The MLP path of :meth:`_train_chunk`: the steps run on contiguous per-layer copies of
        the parameters (see :func:`mlp_sgd_step`), written into the rows ``theta`` at the end."""
        num, steps, _ = batches.shape
        start = self.layout.unflatten(global_params.unsqueeze(0))  # {name: (1, *shape)}
        params = {}
        for name, value in start.items():
            params[name] = self._scratch.take(name, (num, *value.shape[1:]), global_params)
            params[name].copy_(value.expand(num, *value.shape[1:]))
        buffers = self.layout.unflatten(bufs) if self.momentum else None
        flat_rows = batches.reshape(-1)  # one gather for all steps of the chunk
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

    def _train_chunk(self, global_params, x, y, batches, bufs, theta, seeds) -> None:
        """Train the clients of one chunk in place: ``theta (c, d)`` starts as the global
        model and ends as the updates; ``seeds`` are the chunk's dropout seeds (or ``None``).
        The vmap path works on per-parameter views of the flat rows, so no ``(c, d)``
        temporary is allocated per step."""
        if self.momentum and bufs is None:  # a fresh optimizer (e.g. the server's root update)
            bufs = torch.zeros_like(theta)
        if self.mlp_plan is not None:
            self._train_mlp_chunk(global_params, x, y, batches, bufs, theta)
            return
        theta.copy_(global_params.expand(len(theta), -1))
        if self.path == "clients":
            self._train_client_by_client(x, y, batches, bufs, theta, seeds)
        else:
            params = self.layout.unflatten(theta)
            buffers = self.layout.unflatten(bufs) if self.momentum else None
            seeds = () if seeds is None else seeds
            generators = [self.dropout.generator(s, theta.device) for s in seeds]
            batch = batches.shape[2]
            for step in range(batches.shape[1]):
                rows = batches[:, step]
                drawn = [self.dropout.draw(batch, g, theta.dtype) for g in generators]
                masks = (
                    {key: torch.stack([m[key] for m in drawn]) for key in drawn[0]} if drawn else {}
                )
                self._sgd_step(params, self._grads(params, masks, x[rows], y[rows]), buffers)
        theta.sub_(global_params)

    def _train_client_by_client(self, x, y, batches, bufs, theta, seeds) -> None:
        """Convolutional models on the CPU: whole clients on parallel threads
        (:mod:`robustfl.kernels.conv`), each thread with a copy of the model whose parameters
        hold one client's at a time (plain autograd: ``torch.func`` costs more per operation
        on networks of many small ones)."""

        def client(c: int) -> None:
            local = self._per_thread
            if getattr(local, "model", None) is None:
                local.model = copy.deepcopy(self._twin).requires_grad_(True)
                local.dropout = DropoutMasks(local.model)
            params = list(local.model.parameters())
            named = dict(zip(self.layout.names, params, strict=True))
            buffers = self.layout.unflatten(bufs[c]) if self.momentum else None
            generator = None if seeds is None else local.dropout.generator(seeds[c], theta.device)
            with torch.no_grad():
                nn.utils.vector_to_parameters(theta[c], params)
            for rows in batches[c]:
                if generator is not None:
                    local.dropout.install(local.dropout.draw(len(rows), generator, theta.dtype))
                loss = nn.functional.cross_entropy(local.model(x[rows]), y[rows])
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    self._sgd_step(named, dict(zip(self.layout.names, grads, strict=True)), buffers)
            with torch.no_grad():
                theta[c] = nn.utils.parameters_to_vector(params)

        for_each_client(client, len(theta))

    def _sgd_step(self, params: dict, grads: dict, buffers: dict | None) -> None:
        """``torch.optim.SGD``'s step in place, buffers starting at zero (see the class)."""
        for name in self.layout.names:
            g = grads[name]
            if self.weight_decay:
                g.add_(params[name], alpha=self.weight_decay)
            if self.momentum:
                g = buffers[name].mul_(self.momentum).add_(g, alpha=1.0 - self.dampening)
            params[name].add_(g, alpha=-self.lr)


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
