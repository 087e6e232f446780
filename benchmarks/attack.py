"""The adaptive attack's cost per round, searching on the full rows against searching in the
span of the rows (the same damage for rotation-equivariant stages), in the same run.

The setting of the ByzFL heatmap: 10 honest and 4 Byzantine clients, d = 101,770 (the MLP
784-128-10), ByzFL's line search (16 evaluations) with the ALIE-shaped perturbation.
"""

from __future__ import annotations

import torch

from attacks.adaptive import Adaptive
from benchmarks.common import median_time, round_context
from robustfl.build import build_defense

HONEST, BYZANTINE, D = 10, 4, 101_770
CLIP_NNM = {
    "clipping": {"_target_": "defenses.clipping.Clipping", "c": 2.0},
    "nnm": {"_target_": "defenses.nnm.NearestNeighborMixing", "f": BYZANTINE},
}
DEFENSES = {
    "clipping + nnm + trimmed_mean": {
        "_target_": "defenses.trimmed_mean.TrimmedMean",
        "f": BYZANTINE,
    },
    "clipping + nnm + geomed (ByzFL's)": {
        "_target_": "defenses.geomed.GeometricMedian",
        "nu": 0.1,
        "iterations": 3,
        "tol": 0.0,
        "init": "zero",
    },
    "krum": {"_target_": "defenses.krum.Krum", "f": BYZANTINE},
    "median": {"_target_": "defenses.median.Median"},
}


def run(quick: bool = False) -> list[dict]:
    d = 10_000 if quick else D
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(HONEST, d, generator=g) * 0.01 + 0.001
    byzantine = torch.randn(BYZANTINE, d, generator=g) * 0.01
    rows = []
    for name, node in DEFENSES.items():
        defense = build_defense(node, CLIP_NNM if name.startswith("clipping") else None)
        ctx = round_context(HONEST + BYZANTINE, d, defense, BYZANTINE)
        times, gammas = {}, {}
        for project in (False, True):
            attack = Adaptive(shape="alie", search="line", project=project)
            times[project] = median_time(
                lambda a=attack, c=ctx: a.poison_gradients(honest, byzantine, c), repeat=5
            )
            gammas[project] = attack.last_gamma
        rows.append(
            {
                "defense": name,
                "n": HONEST + BYZANTINE,
                "d": d,
                "full_rows_ms": times[False] * 1e3,
                "span_ms": times[True] * 1e3,
                "speedup": times[False] / times[True],
                "same_gamma": abs(gammas[True] - gammas[False]) <= 1e-6 * max(1.0, gammas[False]),
            }
        )
    return rows
