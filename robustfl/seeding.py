"""Independent, named random streams derived from one seed.

Every random choice of a run draws from its own stream (``"partition"``, ``"byzantine"``,
``"sampling"``, ``"batches"``, ``"dropout"``, ``"attack"``, ``"model"``, ...), so changing
one component (say the defense) never shifts the randomness another one sees: runs that
differ only in the defense get the same partition, Byzantine ids, minibatches and dropout
masks.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

#: The streams the engine keeps between rounds (and checkpoints); others are used once at
#: set-up: "partition", "byzantine", "poison_data", "model", "root", "split".
STREAMS = (
    "sampling",
    "batches",
    "dropout",
    "attack",
    "defense",
    "server",
    "privacy",
    "compression",
)
#: Streams that live on the run's device: they draw noise of the size of the update matrix.
DEVICE_STREAMS = ("privacy", "compression")


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream``, stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for ``stream``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, stream))
    return generator


def numpy_generator(seed: int, stream: str) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded for ``stream``."""
    return np.random.default_rng(stream_seed(seed, stream))
