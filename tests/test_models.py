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


def test_karimireddy_cnn_is_the_authors_network():
    """Their codes/tasks/mnist.py, written out with torch.nn.functional: conv 32 -> ReLU ->
    conv 64 (no ReLU) -> max pool 2 -> fc 128 -> ReLU -> fc 10 (dropout left out)."""
    import torch.nn.functional as F

    from robustfl.models import karimireddy_cnn

    torch.manual_seed(0)
    model = karimireddy_cnn((1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 1_199_882
    w1, b1, w2, b2, w3, b3, w4, b4 = model.parameters()
    x = torch.randn(5, 1, 28, 28)
    h = F.max_pool2d(F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2, b2), 2)
    expected = F.linear(F.relu(F.linear(h.flatten(1), w3, b3)), w4, b4)
    torch.testing.assert_close(model(x), expected)


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
    assert fast is not model and batch < 300
    accuracy, loss = evaluate(model, layout, params, x, y)
    fast_accuracy, fast_loss = evaluate(fast, layout, params, x, y, batch)
    assert fast_accuracy == accuracy and fast_loss == pytest.approx(loss, rel=1e-5)
