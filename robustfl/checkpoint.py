"""The latest-round checkpoint of a run: ``checkpoint.pt`` in the run folder.

It holds everything that evolves over rounds (global model, client and server momentum,
generator states, attack and defense state, the metrics so far), written atomically, and is
read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
only, never pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``run_dir/checkpoint.pt`` so that a reader never sees half a file."""
    path = Path(run_dir) / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir``, or ``None`` when there is none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
