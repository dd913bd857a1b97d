"""Segment reductions over group labels, the one primitive every estimator needs."""

from __future__ import annotations

import torch
from torch import Tensor


def dense_groups(group_index: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group labels to 0..G-1; returns (inverse, G)."""
    if group_index.dim() != 1:
        raise ValueError(f"group_index must be 1-D, got shape {tuple(group_index.shape)}")
    _, inverse = torch.unique(group_index, return_inverse=True)
    num = int(inverse.max().item()) + 1 if inverse.numel() else 0
    return inverse, num


def group_sum(values: Tensor, inverse: Tensor, num_groups: int) -> Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, inverse, values
    )


def group_count(inverse: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    return group_sum(torch.ones_like(inverse, dtype=dtype), inverse, num_groups)


def group_reduce(values: Tensor, inverse: Tensor, num_groups: int, reduce: str) -> Tensor:
    """Per-group "amin" / "amax" / "mean" (scatter_reduce over labels)."""
    out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, inverse, values, reduce=reduce, include_self=False)
