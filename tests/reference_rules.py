"""Slow, loop-based float64 versions of the rules' definitions, written independently of
defenses/ (no shared code), for the tests to compare against."""

from __future__ import annotations

import itertools
import math

import numpy as np


def sq(a, b):
    return float(np.sum((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def krum_scores(rows, f):
    n = len(rows)
    k = n - f - 2
    scores = []
    for i in range(n):
        others = sorted(sq(rows[i], rows[j]) for j in range(n) if j != i)
        scores.append(sum(others[:k]))
    return scores


def krum_index(rows, f):
    scores = krum_scores(rows, f)
    return min(range(len(rows)), key=lambda i: (scores[i], i))


def multi_krum(rows, f, m):
    scores = krum_scores(rows, f)
    chosen = sorted(sorted(range(len(rows)), key=lambda i: (scores[i], i))[:m])
    return np.mean([rows[i] for i in chosen], axis=0), chosen


def bulyan(rows, f):
    n = len(rows)
    remaining = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        sub = [rows[i] for i in remaining]
        scores = krum_scores(sub, f) if len(sub) > f + 2 else [0.0] * len(sub)
        # equal scores: the smallest summed squared distance to the remaining rows, then index
        spread = [sum(sq(a, b) for b in sub) for a in sub]
        pick = remaining[min(range(len(sub)), key=lambda i: (scores[i], spread[i], i))]
        chosen.append(pick)
        remaining.remove(pick)
    theta = n - 2 * f
    beta = theta - 2 * f
    sel = np.array([rows[i] for i in chosen], float)
    out = [nearest_to_median_mean(sel[:, j].tolist(), beta) for j in range(sel.shape[1])]
    return np.array(out), sorted(chosen)


def nnm(rows, f):
    n = len(rows)
    out = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: (sq(rows[i], rows[j]), j != i))
        out.append(np.mean([rows[j] for j in order[: n - f]], axis=0))
    return np.array(out)


def all_subsets(n, k):
    return itertools.combinations(range(n), k)


def lower_middle_median(values):
    """The median as the rules define it: the middle of the sorted values (NaN last), or the
    mean of the two middle ones."""
    ordered = sorted(values, key=lambda v: (math.isnan(v), v))
    t = len(ordered)
    return ordered[t // 2] if t % 2 else 0.5 * (ordered[t // 2 - 1] + ordered[t // 2])


def nearest_to_median_mean(values, keep):
    """The mean of the ``keep`` values nearest to the median, by enumeration: every value
    closer than the keep-th smallest distance is in; each way of filling the places left from
    the values at exactly that distance is one choice, and the result is the average over the
    choices. ``None`` when a choice holds a non-finite value or the median is not finite (the
    rule's output is then non-finite)."""
    med = lower_middle_median(values)
    if not math.isfinite(med):
        return None
    dist = [abs(v - med) if math.isfinite(v) else math.inf for v in values]
    radius = sorted(dist)[keep - 1]
    closer = [v for v, e in zip(values, dist, strict=True) if e < radius]
    tied = [v for v, e in zip(values, dist, strict=True) if e == radius]
    if not math.isfinite(radius):
        return None
    means = [
        (sum(closer) + sum(choice)) / keep
        for choice in itertools.combinations(tied, keep - len(closer))
    ]
    return sum(means) / len(means)
