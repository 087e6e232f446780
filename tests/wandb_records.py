"""Read a W&B ``.wandb`` transaction log without network or W&B's own reader.

The file is a 7-byte header (``:W&B``, magic, version), then LevelDB-log framing: 32 KiB
blocks; each record chunk has a 7-byte header (CRC32C, length as little-endian uint16, type:
1 full, 2 first, 3 middle, 4 last); a block's tail shorter than a header is padding. Each
reassembled record is a ``wandb.proto.wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if length == 0 and kind == 0:
            offset += room  # zero padding to the end of the block
            continue
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
            pending = b""
    return records


def read_run(path: Path) -> dict:
    """``{"history": [...], "summary": {...}, "config": {...}, "exit_code": int | None}``."""
    out = {
        "history": [],
        "summary": {},
        "config": {},
        "exit_code": None,
        "group": None,
        "name": None,
        "tags": [],
    }
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                out["config"][item.key] = json.loads(item.value_json)
            if kind == "run":
                out["group"], out["name"] = record.run.run_group, record.run.display_name
                out["tags"] = list(record.run.tags)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out
