"""gemv: the PyTorch twin against fp64, its refusals, and the Triton kernel against the twin
under the interpreter (more shapes: the conformance family ``gemv`` on the GPU)."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels import KernelInputError, gemv
from tests.interpreter import interpreted, run_under_interpreter


def test_twin_equals_linear_in_fp64() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(3, 40, dtype=torch.float64), torch.randn(7, 40, dtype=torch.float64)
    torch.testing.assert_close(gemv(x, w, backend="torch"), x @ w.T)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((torch.zeros(2, 8), torch.zeros(3, 9)), "must share K >= 1"),
        ((torch.zeros(9, 8), torch.zeros(3, 8)), "M=9 (rows of x) is out of range"),
        ((torch.zeros(2, 8), torch.zeros(3, 8, dtype=torch.float64)), "share a dtype"),
        ((torch.zeros(2, 8, dtype=torch.long), torch.zeros(3, 8)), "x must be a 2-D floating"),
        ((torch.zeros(2, 8), torch.zeros(3, 8, requires_grad=True)), "has no backward"),
        ((torch.zeros(2, 8), torch.zeros(8, 3).T), "weight must be contiguous"),
    ],
)
def test_refusals_name_the_argument(args: tuple, needle: str) -> None:
    with pytest.raises(KernelInputError) as info:
        gemv(*args, backend="torch")
    assert needle in str(info.value) and str(info.value).startswith("gemv: ")


def test_gemv_under_interpreter() -> None:
    run_under_interpreter(__file__)


CASES = [  # M, N, K, dtype
    (1, 1, 1, torch.float32),
    (1, 37, 130, torch.bfloat16),
    (3, 70, 64, torch.float16),
    (8, 5, 1100, torch.float32),
    (4, 37, 24, torch.bfloat16),
]


@interpreted
@pytest.mark.parametrize(("M", "N", "K", "dtype"), CASES)
def test_triton_equals_twin(M: int, N: int, K: int, dtype: torch.dtype) -> None:
    torch.manual_seed(M * 131 + N + K)
    x = torch.randn(M, 2 * K, dtype=dtype)[:, ::2] if M > 1 else torch.randn(M, K, dtype=dtype)
    w = (K**-0.5 * torch.randn(N, K)).to(dtype)
    got = gemv(x, w, backend="triton")
    want = (x.double() @ w.double().T).to(dtype)
    torch.testing.assert_close(got, want, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-5)
