"""Small helpers shared by attacks."""

from __future__ import annotations

import torch
from torch import Tensor


def repeat_row(row: Tensor, count: int) -> Tensor:
    """``(d,)`` -> ``(count, d)``: every Byzantine client sends the same crafted row."""
    return row.unsqueeze(0).expand(count, -1).clone()


def unit_vector(v: Tensor) -> Tensor:
    """``v / ||v||`` (zero stays zero)."""
    return v / torch.linalg.vector_norm(v).clamp(min=torch.finfo(v.dtype).tiny)
