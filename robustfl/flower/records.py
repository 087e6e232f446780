"""Flower's ``ArrayRecord`` (named arrays) to and from this project's flat ``(d,)`` vectors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from torch import Tensor


def flatten_arrays(record: ArrayRecord) -> Tensor:
    """The arrays of ``record``, in its key order, as one float32 vector ``(d,)``."""
    arrays = record.to_numpy_ndarrays()
    if not arrays:
        return torch.zeros(0)
    return torch.from_numpy(np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]))


def unflatten_arrays(flat: Tensor, like: ArrayRecord) -> ArrayRecord:
    """``flat (d,)`` cut into the keys, shapes and dtypes of ``like``."""
    values = flat.detach().cpu().numpy()
    arrays, start = {}, 0
    for key, array in zip(like.keys(), like.to_numpy_ndarrays(), strict=True):
        end = start + array.size
        arrays[key] = Array(values[start:end].reshape(array.shape).astype(array.dtype, copy=True))
        start = end
    if start != len(values):
        raise ValueError(f"a vector of {len(values)} values does not fill arrays of {start}.")
    return ArrayRecord(arrays)


def reply_arrays(reply: Message) -> tuple[str, ArrayRecord]:
    """The one ``ArrayRecord`` of a training reply, with its key."""
    records = reply.content.array_records
    if len(records) != 1:
        raise ValueError(
            f"a training reply from node {reply.metadata.src_node_id} carries "
            f"{len(records)} ArrayRecords; robustfl's strategies expect exactly one (the "
            "weights after local training)."
        )
    return next(iter(records.items()))


def reply_metric(reply: Message, key: str) -> float | int | None:
    """The value of ``key`` in the reply's MetricRecords, or ``None``."""
    for record in reply.content.metric_records.values():
        if key in record:
            return record[key]
    return None


def client_identities(replies: Iterable[Message], key: str) -> tuple[list[int], bool]:
    """Each reply's client identity, and whether it is the integer metric ``key`` (a client
    id, stable across rounds), which it is when every reply carries it; otherwise the sending
    node's id (an unsigned 64-bit number)."""
    replies = list(replies)
    values = [reply_metric(reply, key) for reply in replies]
    if all(value is not None for value in values):
        return [int(value) for value in values], True
    return [int(reply.metadata.src_node_id) for reply in replies], False


@dataclass
class ReplyRows:
    """A round's valid training replies as update rows.

    Attributes:
        replies: the replies, ordered by client identity.
        identities: their client identities (:func:`client_identities`), ascending.
        named: whether the identities are client ids (else node ids).
        theta: ``(d,)`` the weights sent out.
        updates: ``(n, d)`` float32, each reply's weights minus ``theta``.
    """

    replies: list[Message]
    identities: list[int]
    named: bool
    theta: Tensor
    updates: Tensor


def reply_rows(replies: Iterable[Message], sent: ArrayRecord, key: str) -> ReplyRows:
    """The valid replies (errors dropped) ordered by client identity, and their updates
    against the weights ``sent``."""
    valid = [reply for reply in replies if not reply.has_error()]
    identities, named = client_identities(valid, key)
    order = sorted(range(len(valid)), key=identities.__getitem__)
    valid = [valid[i] for i in order]
    theta = flatten_arrays(sent)
    updates = (
        torch.stack([flatten_arrays(reply_arrays(reply)[1]) for reply in valid]) - theta
        if valid
        else torch.zeros(0, len(theta))
    )
    return ReplyRows(valid, [identities[i] for i in order], named, theta, updates)


def take_sent(store: dict[int, ArrayRecord], server_round: int, who: str) -> ArrayRecord:
    """The weights ``who`` kept in ``configure_train`` for ``server_round``, removed."""
    sent = store.pop(server_round, None)
    if sent is None:
        raise RuntimeError(
            f"{who}.aggregate_train(server_round={server_round}) without configure_train for "
            "that round: updates are computed against the weights sent out."
        )
    return sent
