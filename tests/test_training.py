"""The batched engine against the plain per-client loop, on the same sampled batches."""

import pytest
import torch

from robustfl.models import cnn, init_model, mlp
from robustfl.reference import train_clients_loop
from robustfl.training import ClientData, LocalTrainer, ParamLayout, sample_batch_indices


def make_data(num_clients=6, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k in range(num_clients):
        size = 20 + 3 * k  # unequal client sizes
        parts.append(
            (torch.randn(size, *shape, generator=g), torch.randint(0, 10, (size,), generator=g))
        )
    return ClientData.from_parts(parts)


@pytest.mark.parametrize(
    ("builder", "momentum", "weight_decay", "chunk"),
    [(mlp, 0.0, 0.0, 0), (mlp, 0.9, 1e-3, 4), (cnn, 0.5, 0.0, 0)],
)
def test_vmap_engine_equals_per_client_loop(builder, momentum, weight_decay, chunk):
    data = make_data()
    model = init_model(builder, (1, 8, 8), 10, seed=1)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    clients = torch.arange(6)
    trainer = LocalTrainer(
        model, layout, lr=0.1, momentum=momentum, weight_decay=weight_decay, chunk_size=chunk
    )
    buf_engine = torch.randn(6, layout.d) * 0.01 if momentum else None
    buf_loop = buf_engine.clone() if momentum else None
    for round_ in range(2):  # two rounds: momentum buffers must carry over
        batches = sample_batch_indices(data, clients, 3, 8, torch.Generator().manual_seed(round_))
        fast = trainer.train(theta, data.x, data.y, batches, buf_engine)
        slow = train_clients_loop(
            model, layout, theta, data.x, data.y, batches, 0.1, momentum, weight_decay, buf_loop
        )
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
        if momentum:
            torch.testing.assert_close(buf_engine, buf_loop, rtol=1e-4, atol=1e-6)
        theta = theta + fast.mean(0)


def test_batches_stay_within_each_client_and_cover_it_without_replacement():
    data = make_data()
    clients = torch.tensor([1, 4])
    batches = sample_batch_indices(
        data, clients, steps=4, batch_size=5, generator=torch.Generator().manual_seed(0)
    )
    assert batches.shape == (2, 4, 5)
    for row, client in enumerate(clients.tolist()):
        start, size = int(data.offsets[client]), int(data.sizes[client])
        drawn = batches[row].flatten()
        assert drawn.min() >= start and drawn.max() < start + size
        first_pass = drawn[:size] if len(drawn) >= size else drawn
        assert len(set(first_pass.tolist())) == len(first_pass)  # no repeat within a pass


@pytest.mark.parametrize("hidden", [[], [16], [32, 8]])
def test_hand_written_mlp_gradients_equal_vmap_grad(hidden):
    from torch.func import grad, vmap

    from robustfl.models import logreg
    from robustfl.training import make_loss, make_mlp_grads, mlp_plan

    builder = logreg if not hidden else (lambda **k: mlp(hidden=hidden, **k))
    model = init_model(builder, (1, 8, 8), 10, seed=3)
    plan = mlp_plan(model)
    assert plan is not None and len(plan) == len(hidden) + 1
    layout = ParamLayout.of(model)
    params = layout.unflatten(
        layout.flatten(model).expand(4, -1).clone() + 0.1 * torch.randn(4, layout.d)
    )
    x, y = torch.randn(4, 6, 1, 8, 8), torch.randint(0, 10, (4, 6))
    fast = make_mlp_grads(plan)(params, x, y)
    slow = vmap(grad(make_loss(model)), in_dims=(0, 0, 0))(params, x, y)
    for name in layout.names:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6)
    assert mlp_plan(cnn((1, 8, 8), 10)) is None
