"""Simulation throughput: the engine's round against the per-client loop, same batches."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleaved_times, median_time, peak_rss_mib, square_matmul
from defenses.median import Median
from robustfl.data import load_digits, load_synthetic
from robustfl.models import cnn, init_model, mlp, resnet20
from robustfl.partition import iid
from robustfl.reference import train_clients_loop
from robustfl.seeding import numpy_generator
from robustfl.training import ClientData, LocalTrainer, ParamLayout, sample_batch_indices


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # "mlp" (64-128-10), "cnn" (MNIST: conv 32, conv 64, fc 128), "resnet20"
    clients: int
    steps: int  # local steps per round
    batch: int
    data: str  # "digits" or "synthetic"
    repeat: int  # rounds timed (the loop: fewer)


WORKLOADS = [
    Workload("MLP, 50 clients, digits", "mlp", 50, 5, 16, "digits", 15),
    Workload("MLP, 200 clients", "mlp", 200, 5, 16, "synthetic", 15),
    Workload("MLP, 1000 clients", "mlp", 1000, 5, 16, "synthetic", 15),
    Workload("CNN, 25 clients, 1 step", "cnn", 25, 1, 32, "synthetic", 5),
    Workload("CNN, 100 clients, 1 step", "cnn", 100, 1, 32, "synthetic", 3),
    Workload("CNN, 25 clients, 5 steps", "cnn", 25, 5, 32, "synthetic", 3),
    Workload("CNN, 100 clients, 5 steps", "cnn", 100, 5, 32, "synthetic", 2),
    Workload("ResNet-20, 25 clients, 1 step", "resnet20", 25, 1, 32, "synthetic", 3),
]
QUICK = [WORKLOADS[0], WORKLOADS[3]]

SHAPES = {"mlp": None, "cnn": (1, 28, 28), "resnet20": (3, 32, 32)}
BUILDERS = {"mlp": lambda **k: mlp(hidden=[128], **k), "cnn": cnn, "resnet20": resnet20}


def setup(w: Workload, device: str) -> tuple[ClientData, nn.Module, ParamLayout]:
    shape = SHAPES[w.model]
    if w.data == "digits":
        dataset = load_digits()
    else:
        samples = w.clients * max(4 * w.batch, 250 if shape is None else 0)
        dataset = load_synthetic(num_samples=samples, num_features=64, image_shape=shape)
    parts = iid(dataset.y_train.numpy(), w.clients, numpy_generator(0, "bench"))
    data = ClientData.from_parts([(dataset.x_train[p], dataset.y_train[p]) for p in parts])
    model = init_model(BUILDERS[w.model], dataset.input_shape, 10, 0).to(device)
    return data.to(torch.device(device)), model, ParamLayout.of(model)


def flops_per_round(w: Workload, model: nn.Module, data: ClientData) -> float:
    """Forward and backward FLOPs of one client's step, counted by torch, times the round's
    client steps."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = nn.functional.cross_entropy(model(data.x[: w.batch]), data.y[: w.batch])
        torch.autograd.grad(loss, list(model.parameters()))
    return counter.get_total_flops() * w.clients * w.steps


def measure(w: Workload, device: str) -> dict:
    """One workload: the engine's round and the per-client loop's, on the same batches, with
    square matmuls for the compute floor, all taken in turns so that they see the machine in
    the same state (under sustained load this machine runs 15 to 30 % slower)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data, model, layout = setup(w, device)
    theta = layout.flatten(model)
    batches = sample_batch_indices(
        data, torch.arange(w.clients), w.steps, w.batch, torch.Generator().manual_seed(0)
    )
    trainer = LocalTrainer(model, layout, lr=0.05)
    out = torch.empty(w.clients, layout.d, device=device)  # reused, as the engine does
    median = Median()

    def engine_round():
        return median(trainer.train(theta, data.x, data.y, batches, out=out))

    def loop_round():
        return median(train_clients_loop(model, layout, theta, data.x, data.y, batches, 0.05))

    matmul, matmul_flops = square_matmul(device)
    times = interleaved_times(
        {"engine": engine_round, "loop": loop_round, "matmul": matmul},
        repeat=w.repeat,
        warmup=1,
        device=device,
        budget_s=60.0,
    )
    engine, loop = statistics.median(times["engine"]), statistics.median(times["loop"])
    peak_gflops = matmul_flops / min(times["matmul"]) / 1e9
    median_gflops = matmul_flops / statistics.median(times["matmul"]) / 1e9
    flops = flops_per_round(w, model, data)
    aggregate = median_time(lambda: median(out), repeat=7, device=device)
    return {
        "workload": w.name,
        "model": w.model,
        "clients": w.clients,
        "steps": w.steps,
        "d": layout.d,
        "path": trainer.path,
        "engine_ms": engine * 1e3,
        "loop_ms": loop * 1e3,
        "speedup": loop / engine,
        "median_ms": aggregate * 1e3,
        "updates_per_s": w.clients / engine,
        "compute_floor_ms": flops / (peak_gflops * 1e9) * 1e3,
        "x_floor": engine * peak_gflops * 1e9 / flops,
        "matmul_gflops": peak_gflops,
        # both sides as medians (the round's and the matmuls'), a reading of the noise
        "x_floor_at_median_rate": engine * median_gflops * 1e9 / flops,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    return [measure(w, device) for w in (QUICK if quick else WORKLOADS)]
