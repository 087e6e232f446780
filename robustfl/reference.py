"""Reference implementation of local training: a plain loop over clients, one
``torch.optim.SGD`` per client. Slow on purpose; tests compare the batched engine with it
and the benchmarks measure the engine's speed-up over it."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from robustfl.training import DropoutMasks, ParamLayout


def train_clients_loop(
    model: nn.Module,
    layout: ParamLayout,
    global_params: Tensor,
    x: Tensor,
    y: Tensor,
    batches: Tensor,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_rows: Tensor | None = None,
    dampening: float = 0.0,
    dropout_seeds: Tensor | None = None,
) -> Tensor:
    """The updates ``(C, d)`` of ``C`` clients trained one after another on ``batches
    (C, steps, B)``. With ``momentum_rows (C, d)`` the clients' momentum buffers are loaded
    into each optimizer and written back, as the engine keeps them across rounds (the engine's
    buffers start at zero: pass zeros to match its first round). A model with dropout takes
    one seed per client in ``dropout_seeds (C,)``, its masks drawn as
    :class:`~robustfl.training.DropoutMasks` defines them."""
    updates = []
    for client in range(len(batches)):
        local = copy.deepcopy(model).train()
        dropout = DropoutMasks(local)
        if dropout:
            generator = dropout.generator(dropout_seeds[client], x.device)
        torch.nn.utils.vector_to_parameters(global_params.clone(), local.parameters())
        optimizer = torch.optim.SGD(
            local.parameters(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            dampening=dampening,
        )
        if momentum and momentum_rows is not None:
            for param, buf in zip(
                local.parameters(), layout.unflatten(momentum_rows[client]).values(), strict=True
            ):
                optimizer.state[param]["momentum_buffer"] = buf.clone()
        for rows in batches[client]:
            if dropout:
                dropout.install(dropout.draw(len(rows), generator, x.dtype))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(local(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
        if momentum and momentum_rows is not None:
            momentum_rows[client] = torch.cat(
                [optimizer.state[p]["momentum_buffer"].reshape(-1) for p in local.parameters()]
            )
        updates.append(
            torch.nn.utils.parameters_to_vector(local.parameters()).detach() - global_params
        )
    return torch.stack(updates)
