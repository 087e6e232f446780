"""Split the training set among clients.

Every partition function is called as ``partition(labels, num_clients, rng, byzantine=...,
min_size=...)`` with the training labels, the number of clients, a seeded numpy generator,
the ``(num_clients,)`` bool mask of Byzantine clients and the smallest useful client size
(one batch); it returns one array of training-set indices per client. Its own parameters are
bound from config (``_partial_=True``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from robustfl.errors import ConfigError


def iid(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    byzantine: np.ndarray | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Uniform random split: client sizes differ by at most one."""
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
    byzantine: np.ndarray | None = None,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label skew (Hsu, Qi and Brown 2019): class ``c`` is divided among the clients in shares
    ``p_c ~ Dir(alpha * 1)``.

    Small ``alpha`` gives each client few classes; large ``alpha`` approaches IID. Draws are
    repeated until every client holds at least ``min_size`` samples (the usual practice, as in
    NIID-Bench); after ``max_tries`` failures the error says how to relax the setting.
    """
    if alpha <= 0:
        raise ConfigError(f"partition.alpha={alpha} is invalid: it must be > 0.")
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in classes:
            members = members[rng.permutation(len(members))]
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ConfigError(
        f"partition=dirichlet with alpha={alpha} left some of the {num_clients} clients with "
        f"fewer than {min_size} samples (one batch) in {max_tries} draws: raise partition.alpha, "
        "lower fl.num_clients or lower fl.batch_size."
    )


def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    shards_per_client: int = 2,
    byzantine: np.ndarray | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017): sort by label, cut into
    ``num_clients * shards_per_client`` equal contiguous shards, deal each client
    ``shards_per_client`` of them at random."""
    if shards_per_client < 1:
        raise ConfigError(
            f"partition.shards_per_client={shards_per_client} is invalid: it must be >= 1."
        )
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            f"partition=shards needs num_clients * shards_per_client = {num_shards} <= "
            f"{len(labels)} training samples: lower partition.shards_per_client or fl.num_clients."
        )
    # Random order within each label, so shards of one label are not always the same samples.
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def partition_hash(parts: list[np.ndarray]) -> str:
    """A short digest of the assignment of samples to clients, to check runs were paired."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def _sorted_by_label(labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator):
    """``indices`` ordered by label, randomly within a label."""
    return indices[np.lexsort((rng.random(len(indices)), labels[indices]))]


def _honest_clients(
    num_clients: int, byzantine: np.ndarray | None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The Byzantine mask (all False without one) and the indices of the honest clients."""
    is_byz = np.zeros(num_clients, bool) if byzantine is None else np.asarray(byzantine, bool)
    honest = np.flatnonzero(~is_byz)
    if len(honest) == 0:
        raise ConfigError(f"partition={name} needs at least one honest client.")
    return is_byz, honest


def _with_byzantine_samples(
    pieces: list[np.ndarray],
    honest: np.ndarray,
    is_byz: np.ndarray,
    num_samples: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Place ``pieces`` (one per honest client, in order) and give every Byzantine client an IID
    sample of ``num_samples // num_clients`` indices from the whole training set."""
    size = num_samples // len(is_byz)
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(is_byz)
    for client, piece in zip(honest, pieces, strict=True):
        parts[client] = np.sort(piece)
    for client in np.flatnonzero(is_byz):
        parts[client] = np.sort(rng.choice(num_samples, size=size, replace=False))
    return parts


def label_sorted(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    byzantine: np.ndarray | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Karimireddy, He and Jaggi (2022)'s non-IID split: the training set sorted by label and
    cut into contiguous equal shards, one per *honest* client, while each Byzantine client gets
    an IID sample of the same size from the whole training set (it may overlap honest data).

    ``byzantine`` is the ``(num_clients,)`` bool mask of Byzantine clients (the engine passes
    it); without it every client is treated as honest.
    """
    is_byz, honest = _honest_clients(num_clients, byzantine, "label_sorted")
    order = _sorted_by_label(labels, np.arange(len(labels)), rng)
    pieces = np.array_split(order, len(honest))
    return _with_byzantine_samples(pieces, honest, is_byz, len(labels), rng)


def gamma_similarity(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    gamma: float = 0.5,
    byzantine: np.ndarray | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """The ByzFL benchmark's gamma-similarity: a share ``gamma`` of the (shuffled) data is dealt
    IID, the rest is sorted by label and cut into contiguous shards; every *honest* client gets
    one piece of each. ``gamma = 1`` is IID, ``gamma = 0`` fully label-sorted.

    As in ByzFL, where Byzantine workers hold no data, the honest clients share the whole
    training set; each Byzantine client gets an IID sample of ``len(labels) // num_clients``
    (its honest update is computed but the update attacks replace it). ``byzantine`` is the
    ``(num_clients,)`` bool mask the engine passes; without it every client is honest.
    """
    if not 0 <= gamma <= 1:
        raise ConfigError(f"partition.gamma={gamma} is invalid: it must be in [0, 1].")
    is_byz, honest = _honest_clients(num_clients, byzantine, "gamma_similarity")
    shuffled = rng.permutation(len(labels))
    cut = round(gamma * len(labels))
    iid_part = np.array_split(shuffled[:cut], len(honest))
    sorted_part = np.array_split(_sorted_by_label(labels, shuffled[cut:], rng), len(honest))
    pieces = [np.concatenate([a, b]) for a, b in zip(iid_part, sorted_part, strict=True)]
    return _with_byzantine_samples(pieces, honest, is_byz, len(labels), rng)
