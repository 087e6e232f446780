"""The update convention end to end: attacks act on pseudo-gradients (minus the model deltas),
as their papers define them on gradients. A plain per-client loop written in gradient space,
independently of the engine (autograd per client, worker momentum ``m <- beta m + g`` as in
Karimireddy et al.'s ``MomentumWorker``, the attack's formula as published, the server's
``theta <- theta - lr * median``), must reach the engine's model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FAST, run_cli
from scipy.stats import norm
from torch import nn

from robustfl.api import compose_config, run_experiment
from robustfl.build import build
from robustfl.contracts import Attack
from robustfl.engine import Stopwatch, run_round
from robustfl.errors import ConfigError
from robustfl.seeding import torch_generator
from robustfl.training import sample_batch_indices

N, F, ROUNDS, LR, BETA = 10, 2, 6, 0.1, 0.9
SETTING = [
    f"fl.num_clients={N}",
    f"fl.num_byzantine={F}",
    "fl.local_steps=1",
    "fl.batch_size=16",
    f"fl.lr={LR}",
    f"fl.momentum={BETA}",
    "model=logreg",
    "defense=median",
    "progress=false",
]


def alie_rows(honest: np.ndarray) -> np.ndarray:
    """Baruch et al.: mu - z sigma of the honest momentum vectors, z from n and f."""
    s = np.floor(N / 2 + 1) - F
    z = norm.ppf((N - s) / N)
    return honest.mean(0) - z * honest.std(0, ddof=1)


def minmax_std_rows(honest: np.ndarray) -> np.ndarray:
    """Shejwalkar and Houmansadr: mu - gamma * std, the largest gamma (halving from 10 to a
    step of 1e-5) keeping the farthest honest row within the honest diameter."""
    mu, deviation = honest.mean(0), honest.std(0, ddof=1)
    diameter = max(np.sum((a - b) ** 2) for a in honest for b in honest)
    gamma, step, success = 10.0, 10.0, 0.0
    while abs(success - gamma) > 1e-5:
        crafted = mu - gamma * deviation
        if max(np.sum((crafted - h) ** 2) for h in honest) <= diameter:
            success = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return mu - success * deviation


def gradient_space_loop(sim, craft) -> torch.Tensor:
    """The reference run: same data, model, initial weights, Byzantine ids and minibatches as
    ``sim``; everything else written here."""
    theta = sim.global_params.clone().double()
    model = copy.deepcopy(sim.evaluation.model).double()
    x, y = sim.data.x.double(), sim.data.y
    batches = torch_generator(0, "batches")
    momentum = torch.zeros(N, len(theta), dtype=torch.float64)
    byzantine = set(sim.federation.byzantine_ids.tolist())
    for _ in range(ROUNDS):
        rows = sample_batch_indices(sim.data, torch.arange(N), 1, 16, batches)[:, 0]
        for client in range(N):
            nn.utils.vector_to_parameters(theta, model.parameters())
            model.zero_grad()
            nn.functional.cross_entropy(model(x[rows[client]]), y[rows[client]]).backward()
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            momentum[client] = BETA * momentum[client] + grad
        honest = momentum[[c for c in range(N) if c not in byzantine]].numpy()
        sent = momentum.numpy().copy()
        sent[sorted(byzantine)] = craft(honest)
        theta -= LR * torch.from_numpy(np.median(sent, axis=0))
    return theta


@pytest.mark.parametrize(
    ("overrides", "craft"),
    [(["attack=alie"], alie_rows), (["attack=minmax", "attack.perturbation=std"], minmax_std_rows)],
)
def test_engine_equals_a_gradient_space_loop(overrides, craft):
    sim = build(compose_config([*SETTING, *overrides]))
    expected = gradient_space_loop(sim, craft)
    for r in range(ROUNDS):
        run_round(sim, r, Stopwatch({}))
    torch.testing.assert_close(sim.global_params.double(), expected, rtol=1e-4, atol=1e-6)


def test_the_opposite_alie_direction_reaches_another_model():
    """The check above can tell the directions apart: ALIE with ``sign=+1`` (mu + z sigma on
    gradients) does not match the published loop."""
    sim = build(compose_config([*SETTING, "attack=alie", "attack.sign=1"]))
    expected = gradient_space_loop(sim, alie_rows)
    for r in range(ROUNDS):
        run_round(sim, r, Stopwatch({}))
    gap = torch.linalg.vector_norm(sim.global_params.double() - expected)
    assert gap > 100 * 1e-4 * torch.linalg.vector_norm(expected)


class Flood(Attack):
    """A user's attack as the README describes it: a subclass overriding one method."""

    def poison_gradients(self, honest, byzantine, ctx):
        return torch.full_like(byzantine, 1000.0)


def test_the_engine_calls_what_a_subclass_overrides():
    sim = build(compose_config([*FAST, "defense=mean"]))
    sim.attack = Flood()
    result = run_round(sim, 0, Stopwatch({}))
    assert result.robustness_error > 100


def test_an_attack_written_against_the_old_contract_fails_loudly():
    with pytest.raises(TypeError, match="poison_gradients"):

        class Old(Attack):
            def poison_updates(self, honest, byzantine, ctx):
                return byzantine


def test_an_attack_without_byzantine_clients_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="fl.num_byzantine=0"):
        run_experiment([*FAST, "fl.num_byzantine=0", "attack=alie"], tmp_path / "a")
    summary = run_experiment([*FAST, "fl.num_byzantine=0", "attack=none"], tmp_path / "b")
    assert summary["status"] == "completed"


def test_an_option_without_a_name_is_labelled_by_its_file_name(tmp_path):
    result = run_cli(
        *FAST, "attack=sign_flip", "~attack.name", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "sign_flip vs mean (seed 0)" in result.stdout
