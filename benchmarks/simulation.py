"""Simulation throughput: the batched engine against the per-client loop, same batches."""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import interleaved_times, median_time, peak_rss_mib, square_matmul
from defenses.median import Median
from robustfl.data import load_digits, load_synthetic
from robustfl.models import init_model, mlp
from robustfl.partition import iid
from robustfl.reference import train_clients_loop
from robustfl.seeding import numpy_generator
from robustfl.training import ClientData, LocalTrainer, ParamLayout, sample_batch_indices

STEPS, BATCH = 5, 16
WORKLOADS = [  # (name, clients, data)
    ("50 clients, digits", 50, "digits"),
    ("200 clients, synthetic", 200, "synthetic"),
    ("1000 clients, synthetic", 1000, "synthetic"),
]


def mlp_flops_per_round(
    clients: int, hidden: int = 128, inputs: int = 64, classes: int = 10
) -> float:
    """Forward 2 * weights FLOPs per sample, backward about twice that."""
    weights = inputs * hidden + hidden * classes
    return 3 * 2 * weights * clients * STEPS * BATCH


def setup(clients: int, data: str, device: str):
    if data == "digits":
        dataset = load_digits()
    else:
        dataset = load_synthetic(num_samples=clients * 250, num_features=64, num_classes=10)
    parts = iid(dataset.y_train.numpy(), clients, numpy_generator(0, "bench"))
    client_data = ClientData.from_parts(
        [(dataset.x_train[p], dataset.y_train[p]) for p in parts]
    ).to(torch.device(device))
    model = init_model(lambda **k: mlp(hidden=[128], **k), dataset.input_shape, 10, 0).to(device)
    layout = ParamLayout.of(model)
    return client_data, model, layout


def measure(name: str, clients: int, data: str, device: str) -> dict:
    """One workload: the engine's round and the per-client loop's, on the same batches.

    The compute floor's rate is the best of 15 square matmuls taken in turns with the
    engine's 15 rounds, so that both see the machine in the same state: under sustained load
    (as after the loop references) this machine runs the round 15 to 30 % slower than after
    a pause, and a floor measured in a quiet minute would charge that to the engine.
    """
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    client_data, model, layout = setup(clients, data, device)
    theta = layout.flatten(model)
    batches = sample_batch_indices(
        client_data, torch.arange(clients), STEPS, BATCH, torch.Generator().manual_seed(0)
    )
    trainer = LocalTrainer(model, layout, lr=0.05)
    out = torch.empty(clients, layout.d, device=device)  # reused across rounds, as the engine does

    median = Median()

    def engine_round():
        return median(trainer.train(theta, client_data.x, client_data.y, batches, out=out))

    def loop_round():
        return median(
            train_clients_loop(model, layout, theta, client_data.x, client_data.y, batches, lr=0.05)
        )

    matmul, matmul_flops = square_matmul(device)
    times = interleaved_times(
        {"engine": engine_round, "matmul": matmul}, repeat=15, warmup=2, device=device
    )
    engine = statistics.median(times["engine"])
    peak_gflops = matmul_flops / min(times["matmul"]) / 1e9
    loop = median_time(loop_round, repeat=3, warmup=1, device=device)
    aggregate = median_time(lambda: median(out), repeat=7, device=device)
    floor = mlp_flops_per_round(clients) / (peak_gflops * 1e9)
    # `x_floor` divides by the matmuls' best rate, as a floor should; this ratio takes both
    # sides as medians (the round's and the matmuls'), for a reading of the machine's noise.
    median_gflops = matmul_flops / statistics.median(times["matmul"]) / 1e9
    return {
        "workload": name,
        "clients": clients,
        "d": layout.d,
        "engine_ms": engine * 1e3,
        "loop_ms": loop * 1e3,
        "speedup": loop / engine,
        "median_ms": aggregate * 1e3,
        "updates_per_s": clients / engine,
        "compute_floor_ms": floor * 1e3,
        "x_floor": engine / floor,
        "matmul_gflops": peak_gflops,
        "x_floor_at_median_rate": engine * median_gflops * 1e9 / mlp_flops_per_round(clients),
        "peak_rss_mib": peak_rss_mib(),
        # GPU memory of this workload (the engine and the loop), on CUDA only
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Every workload (the first two with ``quick``)."""
    return [measure(*workload, device) for workload in (WORKLOADS[:2] if quick else WORKLOADS)]
