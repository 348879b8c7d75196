"""The exponentials-only kernel behind the selective scan bench's second floor, under Triton's
interpreter: it must compute the forward's exponentials, or its time bounds nothing."""

from __future__ import annotations

import pytest
import torch

from tests.interpreter import interpreted, run_under_interpreter

pytest.importorskip("triton")


def test_exp_floor_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_exp2_sums(dtype: torch.dtype) -> None:
    from memlab.bench.exp_floor import exp2_sums

    delta = torch.rand(2, 16, 70).to(dtype)  # 70 steps: the second tile of 64 is partial
    A = -torch.rand(16, 5) * 8
    ref = torch.exp2(delta.double()[..., None] * A.double()[None, :, None, :]).sum(-1)
    got = exp2_sums(delta, A)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)
