"""The precision the PyTorch twins and the fp64 references compute in."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or the promoted dtype of ``tensors`` where that is wider (float64): the twins
    compute in fp32 whatever their inputs, and in fp64 when checked against an fp64 reference.
    None entries (absent optional inputs) are skipped."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype
