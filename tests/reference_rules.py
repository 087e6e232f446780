"""Slow, loop-based float64 versions of the rules' definitions, written independently of
defenses/ (no shared code), for the tests to compare against."""

from __future__ import annotations

import itertools

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
        pick = remaining[krum_index(sub, f)] if len(sub) > f + 2 else remaining[0]
        chosen.append(pick)
        remaining.remove(pick)
    theta = n - 2 * f
    beta = theta - 2 * f
    sel = np.array([rows[i] for i in chosen], float)
    out = []
    for j in range(sel.shape[1]):
        column = sel[:, j]
        med = np.median(column)
        closest = sorted(column, key=lambda v: abs(v - med))[:beta]
        out.append(np.mean(closest))
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
