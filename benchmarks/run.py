"""``make bench`` / ``python -m benchmarks.run [--quick] [--device cuda] [--only NAME]``.

Prints tables and writes ``benchmarks/results.json`` (with ``--only``, replacing that section
of an existing file and keeping the others). Every figure is a median over
repetitions after warm-up; every comparison is against a baseline measured in the same run.
Nothing is asserted about absolute time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import aggregation, attack, channel, simulation, sweep


def machine(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": device,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_simulation(rows: list[dict]) -> None:
    print("\n## Simulation: one round (local SGD of every client, then the median)")
    print(
        f"{'workload':<32}{'path':>8}{'engine ms':>11}{'loop ms':>10}{'speedup':>9}"
        f"{'median ms':>10}{'floor ms':>9}{'x floor':>8}{'peak MiB':>9}"
    )
    for r in rows:
        print(
            f"{r['workload']:<32}{r['path']:>8}{r['engine_ms']:>11.1f}{r['loop_ms']:>10.1f}"
            f"{r['speedup']:>8.2f}x{r['median_ms']:>10.1f}{r['compute_floor_ms']:>9.1f}"
            f"{r['x_floor']:>8.2f}{r['peak_rss_mib']:>9.0f}"
            + (f"  GPU {r['peak_gpu_mib']:.0f} MiB" if r.get("peak_gpu_mib") is not None else "")
        )


def print_aggregation(rows: list[dict]) -> None:
    print("\n## Aggregation rules (ms; ratio to the best simple reference and to a copy)")
    print(
        f"{'rule':<20}{'n':>5}{'d':>9}{'ours':>9}{'best ref':>10}{'ratio':>7}{'x copy':>8}"
        "  references"
    )
    for r in rows:
        refs = r["references_ms"]
        best = min(refs.values()) if refs else float("nan")
        ratio = f"{r['vs_best_reference']:.2f}" if r["vs_best_reference"] else "-"
        print(
            f"{r['rule']:<20}{r['n']:>5}{r['d']:>9}{r['ms']:>9.2f}{best:>10.2f}{ratio:>7}"
            f"{r['x_copy']:>8.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in refs.items())
        )


def print_attack(rows: list[dict]) -> None:
    print(
        "\n## Adaptive attack, one round (ByzFL's line search, 20 evaluations): full rows vs span of the rows"
    )
    print(
        f"{'defense':<36}{'n':>4}{'d':>9}{'full ms':>10}{'span ms':>10}{'speedup':>9}  same gamma"
    )
    for r in rows:
        print(
            f"{r['defense']:<36}{r['n']:>4}{r['d']:>9}{r['full_rows_ms']:>10.1f}"
            f"{r['span_ms']:>10.1f}{r['speedup']:>8.1f}x  {r['same_gamma']}"
        )


def print_channel(rows: list[dict]) -> None:
    print("\n## Privacy and compression: one round with each, against the same round without")
    print(f"{'workload':<28}{'channel':<20}{'round ms':>10}{'x plain':>9}{'bits/client':>13}")
    for r in rows:
        print(
            f"{r['workload']:<28}{r['channel']:<20}{r['round_ms']:>10.2f}"
            f"{r['ratio_to_plain']:>9.2f}{r['bits_per_client']:>13,}"
        )


def flower_installed() -> bool:
    return importlib.util.find_spec("flwr") is not None


def print_flower(rows: list[dict]) -> None:
    print("\n## The same config on the engine and on Flower's simulation engine (rounds/s)")
    print(
        f"{'clients':>8}{'engine':>9}{'flower':>9}{'steady engine':>15}{'steady flower':>15}{'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['clients']:>8}{r['engine_rounds_per_s']:>9.2f}{r['flower_rounds_per_s']:>9.2f}"
            f"{r['engine_steady_rounds_per_s']:>15.2f}{r['flower_steady_rounds_per_s']:>15.2f}"
            f"{r['steady_ratio']:>6.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--only",
        choices=["simulation", "aggregation", "attack", "channel", "sweep", "flower"],
        default=None,
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    results: dict = {}
    if args.only and args.out.exists():  # keep the other sections of an earlier full run
        results = json.loads(args.out.read_text())
    results["machine"] = machine(args.device)
    print(f"machine: {results['machine']}")
    if args.only in (None, "simulation"):
        results["simulation"] = simulation.run(args.device, args.quick)
        print_simulation(results["simulation"])
    if args.only in (None, "aggregation") and args.device == "cpu":
        results["aggregation"] = aggregation.run(args.quick)
        print_aggregation(results["aggregation"])
    if args.only in (None, "attack") and args.device == "cpu":
        results["attack"] = attack.run(args.quick)
        print_attack(results["attack"])
    if args.only in (None, "channel") and args.device == "cpu":
        results["channel"] = channel.run(args.quick)
        print_channel(results["channel"])
    if args.only in (None, "sweep") and args.device == "cpu" and not args.quick:
        results["sweep"] = sweep.run()
        s = results["sweep"]
        print(
            f"\n## Demo grid with joblib: {s['runs']} runs ({s['completed']} completed) in "
            f"{s['wall_s']:.1f} s = {s['runs_per_minute']:.1f} runs/minute"
        )
    if args.only in (None, "flower") and args.device == "cpu" and flower_installed():
        from benchmarks import flower

        results["flower"] = flower.run(args.quick)
        print_flower(results["flower"])
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
