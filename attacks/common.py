"""Small helpers shared by attacks."""

from __future__ import annotations

import torch
from torch import Tensor

from robustfl.errors import ConfigError


def repeat_row(row: Tensor, count: int) -> Tensor:
    """``(d,)`` -> ``(count, d)``: every Byzantine client sends the same crafted row."""
    return row.unsqueeze(0).expand(count, -1).clone()


def check_sign(sign: int) -> None:
    """The direction of an ALIE-shaped perturbation: -1 (the published attack) or +1 (ByzFL)."""
    if sign not in (-1, 1):
        raise ConfigError(f"attack.sign={sign!r} is invalid: use -1 (the paper) or 1 (ByzFL).")


def unit_vector(v: Tensor) -> Tensor:
    """``v / ||v||`` (zero stays zero)."""
    return v / torch.linalg.vector_norm(v).clamp(min=torch.finfo(v.dtype).tiny)
