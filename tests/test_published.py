"""The published numbers quoted in docs/results.md, recomputed from the values transcribed
from the authors' logs (docs/published/)."""

from __future__ import annotations

import csv
import itertools
import re
import statistics

from conftest import REPO

LOGS = REPO / "docs" / "published" / "karimireddy2022_momentum.csv"
AGGREGATORS = {"krum": "Krum", "cm": "CM", "rfa": "RFA", "cp": "CClip"}
ATTACKS = {"ALIE": "ALIE", "IPM": "IPM", "LF": "label flipping", "mimic": "mimic"}


def read_logs() -> list[dict]:
    with LOGS.open() as handle:
        return list(csv.DictReader(handle))


def test_every_run_of_the_momentum_grid_is_transcribed_once():
    rows = read_logs()
    keys = [(r["aggregator"], r["attack"], r["bucketing_s"], r["seed"]) for r in rows]
    expected = set(itertools.product(AGGREGATORS, ATTACKS, ("0", "2"), ("0", "1", "2")))
    assert len(keys) == len(set(keys)) == 96 and set(keys) == expected
    for row in rows:
        agg, attack, s, seed = row["aggregator"], row["attack"], row["bucketing_s"], row["seed"]
        assert row["repo_path"] == f"outputs/exp3/all/{agg}_{attack}_0.9_s{s}_seed{seed}/stats"
        assert re.fullmatch(r"[0-9a-f]{40}", row["commit"])
        values = [float(row[f"top1_epoch{e}"]) for e in range(16, 21)]
        assert all(0 <= v <= 100 for v in values)
        # 9,984 validation images (78 full batches of 128): every value is k / 9984
        assert all(abs(v * 99.84 - round(v * 99.84)) < 1e-6 for v in values)


def test_results_page_quotes_the_logs():
    cells: dict[tuple[str, str, str], list[float]] = {}
    for row in read_logs():
        score = statistics.mean(float(row[f"top1_epoch{e}"]) for e in range(16, 21))
        key = (ATTACKS[row["attack"]], row["bucketing_s"], AGGREGATORS[row["aggregator"]])
        cells.setdefault(key, []).append(score)
    page = (REPO / "docs" / "results.md").read_text()
    section = page[page.index("attacks x aggregators with worker momentum") :]
    header = "| attack | bucketing | Krum | CM | RFA | CClip |"
    lines = section[section.index(header) :].splitlines()[2:10]
    quoted = 0
    for line in lines:
        attack, bucketing, *entries = [c.strip() for c in line.strip("|").split("|")]
        s = "2" if bucketing == "s = 2" else "0"
        for name, entry in zip(AGGREGATORS.values(), entries, strict=True):
            mean, std = (float(x) for x in re.match(r"([\d.]+) ± ([\d.]+) /", entry).groups())
            values = cells[(attack, s, name)]
            assert mean == round(statistics.mean(values), 1), (attack, s, name)
            assert std == round(statistics.stdev(values), 1), (attack, s, name)
            quoted += 1
    assert quoted == 32
