"""autocast_input casts as autocast's matmuls would: fp32 to the autocast dtype inside
autocast on x's device, fp64 never, and nothing outside autocast."""

from __future__ import annotations

import torch

from memlab.models.modules.autocast_input import autocast_input


def test_casts_like_autocast_only_inside_it() -> None:
    x = torch.randn(3, 4)
    assert autocast_input(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_input(x).dtype == torch.bfloat16
        assert autocast_input(x.double()).dtype == torch.float64
        assert autocast_input(torch.arange(3)).dtype == torch.int64
        assert autocast_input(x).dtype == (x @ x.T).dtype
