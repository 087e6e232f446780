"""Every aggregation rule against simple references for the same definition and against the
bandwidth floor (copying the (n, d) matrix into an existing buffer), in the same run: each
rule and its references take turns, one call each per repetition."""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch

from benchmarks.common import interleaved_median_times, median_time, round_context
from defenses.bucketing import bucketing
from defenses.clipping import clipping
from defenses.nnm import nearest_neighbor_mixing
from robustfl.build import build_defense
from robustfl.linalg import krum_scores

# The four shapes, and (14, 1e5): the ByzFL heatmap's 10 + 4 clients of an MLP.
SHAPES = [(50, 10_000), (50, 100_000), (50, 1_000_000), (200, 100_000), (14, 100_000)]
F_SHARE = 0.2  # f = 20% of n
OURS = "\0ours"  # the rule's own key among its references' in one interleaved measurement


def cdist_krum(x: torch.Tensor, f: int) -> torch.Tensor:
    """Simple reference: torch.cdist distances, then the Krum score."""
    dist = torch.cdist(x, x) ** 2
    return x[int(torch.argmin(krum_scores(dist, len(x) - f - 2)))]


def gram_krum(x: torch.Tensor, f: int) -> torch.Tensor:
    """Best simple reference: a Gram matrix of mean-centered rows, then the Krum score."""
    c = x - x.mean(0)
    sq = (c * c).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * c @ c.T).clamp(min=0)
    return x[int(torch.argmin(krum_scores(dist, len(x) - f - 2)))]


def numpy_sort_median(a: np.ndarray) -> np.ndarray:
    s = np.sort(a, axis=0)
    n = len(a)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def numpy_partition_median(a: np.ndarray) -> np.ndarray:
    """One ``kth`` (numpy's fast path), the lower middle of even ``n`` as the lower part's max."""
    n = len(a)
    p = np.partition(a, n // 2, axis=0)
    return p[n // 2] if n % 2 else 0.5 * (p[: n // 2].max(axis=0) + p[n // 2])


def naive_weiszfeld(x: torch.Tensor, iterations: int, nu: float = 1e-6) -> torch.Tensor:
    v = x.mean(0)
    for _ in range(iterations):
        w = 1 / (x - v).norm(dim=1).clamp(min=nu)
        v = (w[:, None] * x).sum(0) / w.sum()
    return v


def loop_centered_clipping(x: torch.Tensor, tau: float) -> torch.Tensor:
    v = torch.zeros(x.shape[1])
    total = torch.zeros_like(v)
    for row in x:  # the per-client loop of peers' implementations
        diff = row - v
        total += diff * min(1.0, tau / float(diff.norm()))
    return v + total / len(x)


def rules(n: int, f: int) -> dict[str, dict]:
    """name -> {rule, references: {name: fn(x, a)}} (a is the numpy view of x)."""
    b = f
    return {
        "mean": {
            "cfg": {"_target_": "defenses.mean.Mean"},
            "refs": {"numpy mean": lambda x, a: a.mean(0)},
        },
        "median": {
            "cfg": {"_target_": "defenses.median.Median"},
            "refs": {
                "np.median": lambda x, a: np.median(a, axis=0),
                "np.sort": lambda x, a: numpy_sort_median(a),
                "np.partition": lambda x, a: numpy_partition_median(a),
                "torch.median": lambda x, a: torch.median(x, dim=0),
            },
        },
        "trimmed_mean": {
            "cfg": {"_target_": "defenses.trimmed_mean.TrimmedMean", "f": f},
            "refs": {
                "scipy trim_mean": lambda x, a: scipy.stats.trim_mean(a, b / n, axis=0),
                "np.sort": lambda x, a: np.sort(a, axis=0)[b : n - b].mean(0),
            },
        },
        "krum": {
            "cfg": {"_target_": "defenses.krum.Krum", "f": f},
            "refs": {
                "cdist": lambda x, a: cdist_krum(x, f),
                "centered gram": lambda x, a: gram_krum(x, f),
            },
        },
        "multi_krum": {
            "cfg": {"_target_": "defenses.multi_krum.MultiKrum", "f": f},
            "refs": {"centered gram": lambda x, a: gram_krum(x, f)},
        },
        "bulyan": {
            "cfg": {"_target_": "defenses.bulyan.Bulyan", "f": f},
            "refs": {"one sort + one krum": lambda x, a: (np.sort(a, axis=0), gram_krum(x, f))},
        },
        "geomed": {
            "cfg": {"_target_": "defenses.geomed.GeometricMedian", "iterations": 10, "tol": 0.0},
            "refs": {"naive weiszfeld": lambda x, a: naive_weiszfeld(x, 10)},
        },
        "centered_clipping": {
            "cfg": {"_target_": "defenses.centered_clipping.CenteredClipping", "tau": 1.0},
            "refs": {"per-client loop": lambda x, a: loop_centered_clipping(x, 1.0)},
        },
        "norm_bound": {"cfg": {"_target_": "defenses.norm_bound.NormBound", "M": 1.0}, "refs": {}},
        "fltrust": {"cfg": {"_target_": "defenses.fltrust.FLTrust"}, "refs": {}},
        "dnc": {"cfg": {"_target_": "defenses.dnc.DnC", "f": f}, "refs": {}},
        "foolsgold": {"cfg": {"_target_": "defenses.foolsgold.FoolsGold"}, "refs": {}},
        "nnm (pre)": {
            "fn": lambda x: nearest_neighbor_mixing(x, f),
            "refs": {"centered gram": lambda x, a: gram_krum(x, f)},
        },
        "bucketing (pre)": {
            "fn": lambda x: bucketing(x, 2, torch.Generator().manual_seed(0)),
            "refs": {},
        },
        "arc clipping (pre)": {"fn": lambda x: clipping(x, f=f, adaptive=True), "refs": {}},
    }


def run(quick: bool = False) -> list[dict]:
    rows = []
    for n, d in SHAPES[:2] if quick else SHAPES:
        f = int(F_SHARE * n)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * 0.01 + 1.0
        a = x.numpy()
        buffer = torch.empty_like(x)
        copy = median_time(lambda b=buffer, x=x: b.copy_(x), repeat=9)
        # Sub-millisecond calls need many repetitions for a steady median on a shared machine.
        repeat = 3 if n * d >= 50_000_000 else 5 if n * d > 2_000_000 else 31
        for name, spec in rules(n, f).items():
            if "cfg" in spec:
                rule = build_defense(spec["cfg"])
                rule.prepare(round_context(n, d))
                fn = rule
            else:
                fn = spec["fn"]
            calls = {OURS: lambda fn=fn, x=x: fn(x)}
            calls.update({ref: lambda r=r, x=x, a=a: r(x, a) for ref, r in spec["refs"].items()})
            refs = interleaved_median_times(calls, repeat=repeat)
            ours = refs.pop(OURS)
            best = min(refs.values()) if refs else None
            rows.append(
                {
                    "rule": name,
                    "n": n,
                    "d": d,
                    "ms": ours * 1e3,
                    "references_ms": {k: v * 1e3 for k, v in refs.items()},
                    "vs_best_reference": ours / best if best else None,
                    "copy_ms": copy * 1e3,
                    "x_copy": ours / copy,
                }
            )
    return rows
