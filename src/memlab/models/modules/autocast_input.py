"""An activation cast once to the autocast dtype, for layers that project it several times."""

from __future__ import annotations

import torch


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast matmul would run x in: the autocast dtype of its device when
    autocast is on there and x is an fp16/bf16/fp32 tensor, else x's own dtype."""
    device = x.device.type
    if not torch.is_autocast_enabled(device) or not x.is_floating_point() or x.dtype == torch.float64:
        return x.dtype
    return torch.get_autocast_dtype(device)


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x as every autocast matmul would cast it (to ``autocast_dtype(x)``).

    Autocast casts an fp32 activation afresh for each op that reads it, and each cast gives back
    its own fp32 gradient to add; a layer reading x through several projections casts it once.
    """
    return x.to(autocast_dtype(x))
