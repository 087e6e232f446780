"""The batched engine against the plain per-client loop, on the same sampled batches."""

import pytest
import torch

from robustfl.kernels.conv import has_convolutions
from robustfl.kernels.mlp import cache_chunk_size, mlp_plan
from robustfl.models import cnn, init_model, mlp, resnet20
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


def deep_mlp(**kwargs):
    return mlp(hidden=[32, 8], **kwargs)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def cnn_groupnorm(**kwargs):
    return cnn(channels=[8, 16], groups=4, **kwargs)


def small_resnet(**kwargs):
    return resnet20(width=4, groups=2, **kwargs)


def logreg_model(**kwargs):
    from robustfl.models import logreg

    return logreg(**kwargs)


@pytest.mark.parametrize(
    ("builder", "momentum", "weight_decay", "chunk", "dampening"),
    [
        (mlp, 0.0, 0.0, 0, 0.0),
        (mlp, 0.9, 1e-3, 4, 0.0),
        (mlp, 0.9, 1e-3, 0, 0.9),  # ByzFL's moving-average momentum
        (deep_mlp, 0.0, 1e-2, 0, 0.0),
        (deep_mlp, 0.0, 1e-2, 4, 0.0),  # weight decay as baddbmm's beta; a short last chunk
        (logreg_model, 0.5, 0.0, 3, 0.0),
        (cnn, 0.5, 0.0, 0, 0.0),  # client by client on parallel threads, and vmap(grad)
        (cnn, 0.5, 1e-3, 0, 0.3),
        (cnn, 0.0, 1e-3, 4, 0.0),
        (cnn_groupnorm, 0.9, 1e-3, 0, 0.0),
        (small_resnet, 0.9, 1e-3, 0, 0.0),
    ],
)
@pytest.mark.parametrize("path", [None, "vmap"])
def test_engine_equals_per_client_loop(
    two_threads, builder, momentum, weight_decay, chunk, dampening, path
):
    """In float64, where both agree to rounding: in float32 a pre-activation within rounding of
    zero can flip a ReLU in one and not the other, and that client's update then differs by
    far more than rounding (seen: 1e-3 in 64 entries, for 1 draw of the momentum in 200). On
    two torch threads, so that convolutional models train clients side by side (two threads
    sharing one model once broke the result)."""
    data = make_data()
    data.x = data.x.double()
    model = init_model(builder, (1, 8, 8), 10, seed=1).double()
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    clients = torch.arange(6)
    trainer = LocalTrainer(
        model,
        layout,
        lr=0.1,
        momentum=momentum,
        weight_decay=weight_decay,
        chunk_size=chunk,
        dampening=dampening,
        path=path,
    )
    if path is None:  # the path kernels.training_path chooses on the CPU
        assert trainer.path == ("clients" if has_convolutions(model) else "mlp")
    g = torch.Generator().manual_seed(2)
    buf_engine = torch.randn(6, layout.d, generator=g, dtype=torch.float64) * 0.01
    buf_engine = buf_engine if momentum else None
    buf_loop = buf_engine.clone() if momentum else None
    for round_ in range(2):  # two rounds: momentum buffers must carry over
        batches = sample_batch_indices(data, clients, 3, 8, torch.Generator().manual_seed(round_))
        fast = trainer.train(theta, data.x, data.y, batches, buf_engine)
        slow = train_clients_loop(
            model,
            layout,
            theta,
            data.x,
            data.y,
            batches,
            0.1,
            momentum,
            weight_decay,
            buf_loop,
            dampening,
        )
        assert fast.dtype == torch.float64
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
        if momentum:
            torch.testing.assert_close(buf_engine, buf_loop, rtol=1e-9, atol=1e-12)
        theta = theta + fast.mean(0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_engine_in_float32_follows_the_loop_up_to_relu_flips(momentum):
    """The float32 engine (what runs) against the float32 loop: all but the few entries behind
    a ReLU that rounding flipped (see above) agree to float32 rounding."""
    data = make_data()
    model = init_model(deep_mlp, (1, 8, 8), 10, seed=1)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    buf_engine = torch.randn(6, layout.d, generator=torch.Generator().manual_seed(3)) * 0.01
    buf_loop = buf_engine.clone()
    trainer = LocalTrainer(model, layout, lr=0.1, momentum=momentum, weight_decay=1e-3)
    batches = sample_batch_indices(data, torch.arange(6), 3, 8, torch.Generator().manual_seed(0))
    fast = trainer.train(theta, data.x, data.y, batches, buf_engine if momentum else None)
    loop_buffers = buf_loop if momentum else None
    slow = train_clients_loop(
        model, layout, theta, data.x, data.y, batches, 0.1, momentum, 1e-3, loop_buffers
    )
    assert fast.dtype == torch.float32
    close = torch.isclose(fast, slow, rtol=1e-4, atol=1e-6)
    assert close.float().mean() > 0.99
    assert (fast - slow).abs().max() < 0.1 * slow.abs().max()


def test_chunk_sizes_keep_the_weight_set_in_the_cache():
    assert cache_chunk_size(1000, 9610) == 100  # 38.4 MB: 10 chunks of about 4 MiB
    assert cache_chunk_size(14, 101_770) == 14  # 5.7 MB: one
    assert cache_chunk_size(3, 10**7) == 1


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_updates_do_not_depend_on_the_chunking(chunk_size):
    data = make_data()
    model = init_model(mlp, (1, 8, 8), 10, seed=1)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    batches = sample_batch_indices(data, torch.arange(6), 3, 8, torch.Generator().manual_seed(0))
    whole = LocalTrainer(model, layout, lr=0.1, chunk_size=6).train(theta, data.x, data.y, batches)
    chunked = LocalTrainer(model, layout, lr=0.1, chunk_size=chunk_size)
    torch.testing.assert_close(
        chunked.train(theta, data.x, data.y, batches), whole, rtol=1e-5, atol=1e-7
    )


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


def test_mlp_fast_path_is_used_only_for_mlps():
    from robustfl.models import logreg

    assert len(mlp_plan(mlp((1, 8, 8), 10, hidden=[32, 8]))) == 3
    assert len(mlp_plan(logreg((64,), 10))) == 1
    assert mlp_plan(cnn((1, 8, 8), 10)) is None


def test_dampened_momentum_from_zero_is_a_moving_average_of_gradients():
    """With dampening = momentum and one local step at lr 1, a client's update is minus the
    moving average ``m <- beta m + (1 - beta) g`` of its gradients (ByzFL's worker vector),
    the first step included; checked against gradients taken by autograd."""
    data = make_data(num_clients=2)
    model = init_model(mlp, (1, 8, 8), 10, seed=3)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    beta = 0.9
    trainer = LocalTrainer(model, layout, lr=1.0, momentum=beta, dampening=beta)
    buffers = torch.zeros(2, layout.d)
    average = torch.zeros(2, layout.d)
    for round_ in range(3):
        batches = sample_batch_indices(
            data, torch.arange(2), 1, 8, torch.Generator().manual_seed(round_)
        )
        updates = trainer.train(theta, data.x, data.y, batches, buffers)
        for client in range(2):
            local = init_model(mlp, (1, 8, 8), 10, seed=3)
            torch.nn.utils.vector_to_parameters(theta.clone(), local.parameters())
            rows = batches[client, 0]
            loss = torch.nn.functional.cross_entropy(local(data.x[rows]), data.y[rows])
            grads = torch.autograd.grad(loss, list(local.parameters()))
            gradient = torch.cat([g.reshape(-1) for g in grads])
            average[client] = beta * average[client] + (1 - beta) * gradient
        torch.testing.assert_close(updates, -average, rtol=1e-4, atol=1e-7)
        theta = theta + 0.1 * updates.mean(0)


def test_the_fast_twin_computes_the_same_function():
    """Channels-last convolutions and pooling before the ReLU: the same outputs and gradients
    as the model (float64)."""
    from robustfl.kernels.conv import fast_twin

    model = init_model(cnn_groupnorm, (3, 8, 8), 10, seed=3).double()
    twin = fast_twin(model)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert type(twin[2]).__name__ == "MaxPool2d" and type(twin[3]).__name__ == "ReLU"
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(m(x).square().sum(), list(m.parameters())) for m in (model, twin)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    resnet = init_model(resnet20, (3, 8, 8), 10, seed=4).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fast_twin(resnet)(x), resnet(x), rtol=1e-12, atol=1e-12)


def train_with_dropout(trainer, theta, data, batches, seeds, momentum_rows=None):
    return trainer.train(theta, data.x, data.y, batches, momentum_rows, dropout_seeds=seeds)


@pytest.mark.parametrize("path", ["clients", "vmap"])
@pytest.mark.parametrize("chunk", [0, 4])
def test_dropout_training_equals_the_loop_on_every_path(two_threads, path, chunk):
    """Karimireddy et al.'s CNN with its two dropout layers (float64, worker momentum, two
    rounds): client by client on threads, vmap(grad) with the masks as batched buffers, and
    chunked, all equal the per-client loop given the same seeds."""
    from robustfl.models import karimireddy_cnn

    data = make_data()
    data.x = data.x.double()
    model = init_model(karimireddy_cnn, (1, 8, 8), 10, seed=1).double()
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    trainer = LocalTrainer(model, layout, lr=0.1, momentum=0.9, chunk_size=chunk, path=path)
    buf_engine = torch.zeros(6, layout.d, dtype=torch.float64)
    buf_loop = buf_engine.clone()
    stream = torch.Generator().manual_seed(5)
    for round_ in range(2):
        batches = sample_batch_indices(
            data, torch.arange(6), 3, 8, torch.Generator().manual_seed(round_)
        )
        seeds = trainer.dropout.seeds(6, stream)
        fast = train_with_dropout(trainer, theta, data, batches, seeds, buf_engine)
        slow = train_clients_loop(
            model, layout, theta, data.x, data.y, batches, 0.1, 0.9, 0.0, buf_loop, 0.0, seeds
        )
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(buf_engine, buf_loop, rtol=1e-9, atol=1e-12)
        theta = theta + fast.mean(0)


def test_dropout_masks_follow_the_seeds_and_not_the_threads():
    from robustfl.models import karimireddy_cnn

    data = make_data()
    model = init_model(karimireddy_cnn, (1, 8, 8), 10, seed=1)
    plain = init_model(lambda **kw: karimireddy_cnn(dropout=False, **kw), (1, 8, 8), 10, seed=1)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    batches = sample_batch_indices(data, torch.arange(6), 2, 8, torch.Generator().manual_seed(0))
    seeds = torch.arange(6) * 1000 + 17
    trainer = LocalTrainer(model, layout, lr=0.1)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(train_with_dropout(trainer, theta, data, batches, seeds))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-7)
    others = train_with_dropout(trainer, theta, data, batches, seeds + 1)
    without = LocalTrainer(plain, layout, lr=0.1).train(theta, data.x, data.y, batches)
    for client in range(6):  # every client's update depends on its own masks
        assert not torch.allclose(others[client], runs[0][client], atol=1e-6)
        assert not torch.allclose(without[client], runs[0][client], atol=1e-6)
    shuffled = train_with_dropout(trainer, theta, data, batches[[1, 0]], seeds[[1, 0]])
    torch.testing.assert_close(shuffled, runs[0][[1, 0]], rtol=1e-5, atol=1e-7)


def test_dropout_seeds_are_required_exactly_for_models_with_dropout():
    from robustfl.models import karimireddy_cnn

    data = make_data()
    batches = sample_batch_indices(data, torch.arange(6), 1, 8, torch.Generator().manual_seed(0))
    for dropout, seeds in ((True, None), (False, torch.arange(6))):
        model = karimireddy_cnn((1, 8, 8), 10, dropout=dropout)
        layout = ParamLayout.of(model)
        trainer = LocalTrainer(model, layout, lr=0.1)
        assert (trainer.dropout.seeds(6, torch.Generator()) is None) is not dropout
        with pytest.raises(ValueError, match="dropout_seeds: the model has"):
            train_with_dropout(trainer, layout.flatten(model), data, batches, seeds)
