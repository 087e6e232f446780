"""Flower's ``ArrayRecord`` (named arrays) to and from this project's flat ``(d,)`` vectors."""

from __future__ import annotations

from collections.abc import Iterable

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
