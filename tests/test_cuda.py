"""On a GPU the engine, every shipped rule and every shipped attack give the CPU's numbers.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
Everything is compared in float64, where the two devices agree to rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from robustfl.build import build_defense
from robustfl.compression import qsgd, rand_k
from robustfl.config import instantiate_option
from robustfl.contracts import Attack, RoundContext, overrides
from robustfl.models import cnn, init_model, mlp
from robustfl.training import ClientData, LocalTrainer, ParamLayout, sample_batch_indices

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONF = Path(__file__).parents[1] / "conf"
CUDA = torch.device("cuda")
DEVICES = (("cpu", torch.device("cpu")), ("cuda", CUDA))


def clients_data(num_clients: int = 6, seed: int = 0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k in range(num_clients):
        size = 20 + 3 * k
        x = torch.randn(size, 1, 8, 8, generator=g, dtype=torch.float64)
        parts.append((x, torch.randint(0, 10, (size,), generator=g)))
    return ClientData.from_parts(parts)


@pytest.mark.parametrize(
    ("builder", "momentum", "weight_decay"), [(mlp, 0.0, 0.0), (mlp, 0.9, 1e-3), (cnn, 0.5, 1e-3)]
)
def test_local_training_on_cuda_equals_the_cpu(builder, momentum, weight_decay):
    """The hand-written MLP step and the vmap(grad) path, two rounds with momentum carried."""
    data = clients_data()
    model = init_model(builder, (1, 8, 8), 10, seed=1).double()
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    results = {}
    for label, device in DEVICES:
        trainer = LocalTrainer(
            model.to(device), layout, lr=0.1, momentum=momentum, weight_decay=weight_decay
        )
        on_device = data.to(device)
        buffers = torch.zeros(6, layout.d, dtype=torch.float64, device=device)
        params, updates = theta.to(device), []
        for round_ in range(2):
            g = torch.Generator().manual_seed(round_)
            batches = sample_batch_indices(on_device, torch.arange(6), 3, 8, g)
            update = trainer.train(params, on_device.x, on_device.y, batches, buffers)
            assert update.device.type == device.type
            updates.append(update.cpu())
            params = params + update.mean(0)
        results[label] = torch.stack(updates)
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-9, atol=1e-12)


def shipped(group: str, name: str, f: int = 2):
    """conf/<group>/<name>.yaml with ``fl.num_byzantine = f``, resolved to a plain mapping."""
    root = OmegaConf.create(
        {"fl": {"num_byzantine": f}, group: OmegaConf.load(CONF / group / f"{name}.yaml")}
    )
    node = OmegaConf.to_container(root, resolve=True)[group]
    node.pop("name", None)
    return node


def context(device: torch.device, n: int, f: int, defense=None, round_: int = 0):
    return RoundContext(
        round=round_,
        defense=defense,
        global_params=torch.zeros(40, dtype=torch.float64, device=device),
        generator=torch.Generator().manual_seed(round_),
        num_clients=n,
        num_byzantine=f,
        byzantine_rows=torch.arange(n - f, n),
        sample_counts=torch.arange(1, n + 1, dtype=torch.float64),
        client_ids=torch.arange(n),
        defense_generator=torch.Generator().manual_seed(100 + round_),
        server_update=lambda: torch.linspace(-1, 1, 40, dtype=torch.float64, device=device),
    )


def rows(round_: int, nonfinite: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(round_)
    u = torch.randn(11, 40, generator=g, dtype=torch.float64)
    u[9:] *= 6.0  # two outliers, so that clipping and selection have work to do
    if nonfinite:  # a NaN row, a row with infinities, and NaN at the middle of a column
        u[10] = torch.nan
        u[9, :5] = torch.inf
        u[9, 5:10] = -torch.inf
        u[:6, 20] = torch.nan
    return u


@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "defense").glob("*.yaml")))
def test_every_shipped_rule_on_cuda_equals_the_cpu(name, nonfinite):
    """Three rounds each, so that stateful rules (centered clipping, FoolsGold) carry state;
    also with NaN and infinite entries, where the outputs must agree NaN for NaN."""
    outputs = {}
    for label, device in DEVICES:
        defense = build_defense(shipped("defense", name))
        defense.check(11)
        results = []
        for round_ in range(3):
            ctx = context(device, 11, 2, defense, round_)
            defense.prepare(ctx)
            out = defense(rows(round_, nonfinite).to(device))
            assert out.device.type == device.type and out.shape == (40,)
            results.append(out.cpu())
        outputs[label] = torch.stack(results)
    torch.testing.assert_close(
        outputs["cuda"], outputs["cpu"], rtol=1e-7, atol=1e-9, equal_nan=nonfinite
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "attack").glob("*.yaml")))
def test_every_shipped_attack_on_cuda_equals_the_cpu(name):
    """The Byzantine rows an attack writes (model poisoning; data attacks leave them as is)."""
    outputs = {}
    for label, device in DEVICES:
        attack = instantiate_option(shipped("attack", name, f=3))
        defense = build_defense(shipped("defense", "median", f=3))
        u = rows(0).to(device)
        honest, byzantine = u[:8], u[8:]
        ctx = context(device, 11, 3, defense)
        if not overrides(attack, Attack, "poison_gradients"):
            pytest.skip(f"attack={name} poisons data, not updates")
        out = attack.poison_gradients(honest, byzantine.clone(), ctx)
        assert out.device.type == device.type and out.shape == (3, 40)
        outputs[label] = out.cpu()
    torch.testing.assert_close(
        outputs["cuda"], outputs["cpu"], rtol=1e-6, atol=1e-8, equal_nan=True
    )


def test_dropout_training_on_cuda_equals_the_loop_on_cuda():
    """Karimireddy et al.'s CNN with dropout: the vmap path draws each client's masks from a
    CUDA generator seeded as the per-client loop's, so the two agree on the device (the masks
    differ from the CPU's: another generator)."""
    from robustfl.models import karimireddy_cnn
    from robustfl.reference import train_clients_loop

    data = clients_data().to(CUDA)
    model = init_model(karimireddy_cnn, (1, 8, 8), 10, seed=1).double().to(CUDA)
    layout = ParamLayout.of(model)
    theta = layout.flatten(model)
    trainer = LocalTrainer(model, layout, lr=0.1, momentum=0.9)
    assert trainer.path == "vmap"
    buffers = torch.zeros(6, layout.d, dtype=torch.float64, device=CUDA)
    loop_buffers = buffers.clone()
    batches = sample_batch_indices(data, torch.arange(6), 3, 8, torch.Generator().manual_seed(0))
    seeds = trainer.dropout.seeds(6, torch.Generator().manual_seed(1))
    fast = trainer.train(theta, data.x, data.y, batches, buffers, dropout_seeds=seeds)
    slow = train_clients_loop(
        model, layout, theta, data.x, data.y, batches, 0.1, 0.9, 0.0, loop_buffers, 0.0, seeds
    )
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_compressors_on_cuda_send_valid_messages():
    """Random-k keeps exactly k coordinates per row on the GPU; QSGD's nearest levels equal the
    CPU's; its stochastic levels are one of the two neighbours."""
    x = torch.randn(40, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator(device=CUDA).manual_seed(0)
    for k in (10, 700):
        out = rand_k(x.to(CUDA), k, g)
        assert ((out != 0).sum(dim=1) == k).all()
    torch.testing.assert_close(qsgd(x.to(CUDA), 16, 64).cpu(), qsgd(x, 16, 64))
    # one bucket per row: a level is norm / 16, and the draw is within one level of x
    stochastic = qsgd(x.to(CUDA), 16, 0, g).cpu()
    assert ((stochastic - x).abs() <= x.norm(dim=1, keepdim=True) / 16 * (1 + 1e-9)).all()
