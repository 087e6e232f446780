"""``python -m benchmarks.markdown [results.json]``: the tables of docs/performance.md from a
results file written by ``benchmarks.run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def _rate(row: dict) -> str:
    rate = row.get("matmul_gflops")  # absent in results.json files from before it was kept
    return f" ({rate:.0f} GFLOP/s)" if rate else ""


def _at_median(row: dict) -> str:
    ratio = row.get("x_floor_at_median_rate")  # absent in older results files
    return f" ({ratio:.1f})" if ratio else ""


def _gpu_memory(row: dict) -> str:
    mib = row.get("peak_gpu_mib")
    return f" (GPU: {mib:.0f} MiB)" if mib is not None else ""


def simulation(rows: list[dict]) -> str:
    lines = [
        "| workload | engine | loop | speed-up | of which median | client updates/s "
        "| compute floor | engine / floor | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {_ms(r['engine_ms'])} | {_ms(r['loop_ms'])} | "
            f"{r['speedup']:.1f}x | {_ms(r['median_ms'])} | {r['updates_per_s']:,.0f} | "
            f"{_ms(r['compute_floor_ms'])}{_rate(r)} | {r['x_floor']:.1f}{_at_median(r)} | "
            f"{r['peak_rss_mib']:.0f} MiB{_gpu_memory(r)} |"
        )
    return "\n".join(lines)


def aggregation(rows: list[dict]) -> str:
    shapes = sorted({(r["n"], r["d"]) for r in rows}, key=lambda s: (s[0] < 20, s))
    header = " | ".join(f"({n}, {d:.0e})".replace("e+0", "e") for n, d in shapes)
    lines = [f"| rule | {header} | best simple reference |", "|---" * (len(shapes) + 2) + "|"]
    by_rule: dict[str, dict] = {}
    for r in rows:
        by_rule.setdefault(r["rule"], {})[(r["n"], r["d"])] = r
    for rule, cells in by_rule.items():
        texts = []
        for shape in shapes:
            r = cells.get(shape)
            if r is None:
                texts.append("")
                continue
            ratio = f" ({r['vs_best_reference']:.2f})" if r["vs_best_reference"] else ""
            texts.append(_ms(r["ms"]) + ratio)
        refs = next(iter(cells.values()))["references_ms"]
        best = min(refs, key=refs.get) if refs else ""
        lines.append(f"| {rule} | " + " | ".join(texts) + f" | {best} |")
    copies = {(r["n"], r["d"]): r["copy_ms"] for r in rows}
    lines.append(
        "| *copy into a buffer (floor)* | " + " | ".join(_ms(copies[s]) for s in shapes) + " | |"
    )
    return "\n".join(lines)


def attack(rows: list[dict]) -> str:
    lines = [
        "| defense | n | d | full rows | span of the rows | speed-up | same scale chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['defense']} | {r['n']} | {r['d']:,} | {_ms(r['full_rows_ms'])} | "
            f"{_ms(r['span_ms'])} | {r['speedup']:.1f}x | {'yes' if r['same_gamma'] else 'no'} |"
        )
    return "\n".join(lines)


def channel(rows: list[dict]) -> str:
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    lines = [
        "| channel | bits per client | " + " | ".join(workloads) + " |",
        "|---" * (len(workloads) + 2) + "|",
    ]
    by_channel: dict[str, dict] = {}
    for r in rows:
        by_channel.setdefault(r["channel"], {})[r["workload"]] = r
    for name, cells in by_channel.items():
        bits = next(iter(cells.values()))["bits_per_client"]
        texts = [
            f"{_ms(cells[w]['round_ms'])} ({cells[w]['ratio_to_plain']:.2f}x)" if w in cells else ""
            for w in workloads
        ]
        lines.append(f"| {name} | {bits:,} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    results = json.loads(path.read_text())
    print(f"machine: {results['machine']}\n")
    for name, render in (
        ("simulation", simulation),
        ("aggregation", aggregation),
        ("attack", attack),
        ("channel", channel),
    ):
        if name in results:
            print(f"## {name}\n\n{render(results[name])}\n")
    if "sweep" in results:
        s = results["sweep"]
        print(
            f"## sweep\n\n{s['runs']} runs in {s['wall_s']:.1f} s = {s['runs_per_minute']:.1f} runs/minute"
        )


if __name__ == "__main__":
    main()
