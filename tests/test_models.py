import pytest
import torch

from robustfl.errors import ConfigError
from robustfl.models import cnn, init_model, logreg, mlp


@pytest.mark.parametrize(
    ("builder", "shape"),
    [
        (logreg, (64,)),
        (mlp, (1, 8, 8)),
        (cnn, (1, 8, 8)),
        (cnn, (1, 28, 28)),
        (cnn, (3, 32, 32)),
        (cnn, (64,)),
    ],
)
def test_models_map_inputs_to_class_logits(builder, shape):
    model = builder(input_shape=shape, num_classes=7)
    assert model(torch.randn(5, *shape)).shape == (5, 7)


def test_mlp_hidden_widths_and_parameter_count():
    model = mlp((1, 8, 8), 10, hidden=[32, 16])
    expected = (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_cnn_uses_group_norm_never_batch_norm():
    model = cnn((1, 28, 28), 10, channels=[8, 16], groups=4)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    assert not list(model.buffers())  # nothing functional_call would have to carry


def test_model_validation_messages():
    with pytest.raises(ConfigError, match="model.hidden"):
        mlp((64,), 10, hidden=[0])
    with pytest.raises(ConfigError, match="model=cnn needs image input"):
        cnn((10,), 10)
    with pytest.raises(ConfigError, match="model.groups"):
        cnn((1, 8, 8), 10, channels=[6], groups=4)


def test_init_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = init_model(mlp, (64,), 10, seed=7)
    after = torch.rand(1)
    b = init_model(mlp, (64,), 10, seed=7)
    c = init_model(mlp, (64,), 10, seed=8)
    assert torch.equal(before, after)
    pa, pb, pc = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_cnn_hidden_is_one_width_or_a_list_as_for_the_mlp():
    """The presets set model.hidden=[128] for the MLP; model=cnn must accept it too."""
    one = cnn((1, 28, 28), 10, hidden=128)
    listed = cnn((1, 28, 28), 10, hidden=[128])
    assert [p.shape for p in one.parameters()] == [p.shape for p in listed.parameters()]
    deeper = cnn((1, 28, 28), 10, hidden=[64, 32])
    linear = [m for m in deeper if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (64 * 7 * 7, 64),
        (64, 32),
        (32, 10),
    ]
    with pytest.raises(ConfigError, match="model.hidden"):
        cnn((1, 28, 28), 10, hidden=[0])


@pytest.mark.parametrize("preset", ["bucketing_mimic", "byzfl_heatmap"])
def test_reproduction_presets_offer_the_cnn(preset):
    from robustfl.api import compose_config
    from robustfl.config import instantiate_option

    cfg = compose_config([f"experiment={preset}", "model=cnn"])
    model = instantiate_option(cfg.model, _partial_=True)(input_shape=(1, 28, 28), num_classes=10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("dropout", [True, False])
def test_karimireddy_cnn_is_the_authors_network(dropout):
    """Their codes/tasks/mnist.py, written out with torch.nn.functional: conv 32 -> ReLU ->
    conv 64 (no ReLU) -> max pool 2 -> Dropout2d(0.25) -> fc 128 -> ReLU -> Dropout2d(0.5) ->
    fc 10; in evaluation mode dropout is the identity."""
    import torch.nn.functional as F

    from robustfl.models import MaskedDropout, karimireddy_cnn

    torch.manual_seed(0)
    model = karimireddy_cnn((1, 28, 28), 10, dropout=dropout).eval()
    assert sum(p.numel() for p in model.parameters()) == 1_199_882
    layers = [m for m in model.modules() if isinstance(m, MaskedDropout)]
    assert [(m.p, m.sample_mask_shape) for m in layers] == (
        [(0.25, (64, 1, 1)), (0.5, (128,))] if dropout else []
    )
    w1, b1, w2, b2, w3, b3, w4, b4 = model.parameters()
    x = torch.randn(5, 1, 28, 28)
    h = F.max_pool2d(F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2, b2), 2)
    expected = F.linear(F.relu(F.linear(h.flatten(1), w3, b3)), w4, b4)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(
    ("shape", "channelwise", "torch_dropout"),
    [
        ((32, 64, 12, 12), True, "dropout2d"),  # whole channels
        ((32, 64, 12, 12), False, "dropout"),
        ((32, 128), False, "dropout"),
        ((32, 128), True, "dropout"),  # Dropout2d on (N, F) before PyTorch 1.12: per unit
    ],
)
@pytest.mark.parametrize("p", [0.25, 0.5])
def test_masked_dropout_equals_torch_dropout_with_the_same_seed(
    shape, channelwise, torch_dropout, p
):
    import torch.nn.functional as F

    from robustfl.models import MaskedDropout

    layer = MaskedDropout(p, shape[1:], channelwise)
    x = torch.randn(shape)
    layer.mask = layer.draw(shape[0], torch.Generator().manual_seed(7), x.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = getattr(F, torch_dropout)(x, p, training=True)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    kept = layer.mask != 0
    values = layer.mask.unique()
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / (1 - p))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.05


def test_masked_dropout_is_the_identity_in_evaluation_and_loud_without_a_mask():
    from robustfl.models import MaskedDropout

    layer = MaskedDropout(0.5, (3,))
    x = torch.randn(4, 3)
    assert layer.eval()(x) is x
    with pytest.raises(RuntimeError, match=r"needs a mask of shape \(4, 3\).*model.eval\(\)"):
        layer.train()(x)
    layer.mask = torch.ones(4, 1)  # a shape that would broadcast is refused too
    with pytest.raises(RuntimeError, match="needs a mask"):
        layer(x)
    with pytest.raises(ConfigError, match=r"dropout p=1.0 is invalid: use 0 <= p < 1"):
        MaskedDropout(1.0, (3,))


def test_convolutional_models_evaluate_the_same_on_the_fast_path():
    from robustfl.kernels import evaluation_plan
    from robustfl.models import karimireddy_cnn
    from robustfl.training import ParamLayout, evaluate

    torch.manual_seed(0)
    model = karimireddy_cnn((1, 28, 28), 10)
    layout = ParamLayout.of(model)
    params = layout.flatten(model)
    x, y = torch.randn(300, 1, 28, 28), torch.randint(0, 10, (300,))
    fast, batch = evaluation_plan(model, torch.device("cpu"))
    assert fast is not model and batch < 300 and not fast.training and model.training
    accuracy, loss = evaluate(model.eval(), layout, params, x, y)
    fast_accuracy, fast_loss = evaluate(fast, layout, params, x, y, batch)
    assert fast_accuracy == accuracy and fast_loss == pytest.approx(loss, rel=1e-5)
