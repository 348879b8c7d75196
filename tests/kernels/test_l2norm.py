"""L2 norm: the PyTorch twin against F.normalize, input checks, and (under Triton's
interpreter, started by ``test_triton_kernels_under_interpreter``) the Triton kernels against
the fp64 twin, output and gradient, with several rows per program.

Every test draws fresh random inputs; the seed is printed.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from memlab.kernels import l2norm
from memlab.kernels.backend import KernelInputError
from memlab.kernels.compare import rel_err
from memlab.kernels.l2norm import l2norm_torch
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter
from tests.kernels.reference_check import errors_against_reference, fresh_seed

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed_and_small_tiles(monkeypatch):
    fresh_seed()
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    if INTERPRETED:
        from memlab.kernels.l2norm import triton_l2norm

        monkeypatch.setattr(triton_l2norm, "_TILE", 64)  # 1 to 8 rows per program


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, F64])
def test_twin_matches_normalize(dtype):
    x = torch.randn(3, 5, 33, dtype=F64).to(dtype)
    tol = {torch.bfloat16: 8e-3, torch.float32: 1e-6, F64: 1e-6}[dtype]  # fp64: the eps sets it
    assert rel_err(l2norm(x, backend="torch"), F.normalize(x.double(), dim=-1)) < tol


def test_refuses_an_integer_tensor():
    with pytest.raises(KernelInputError, match="l2norm: x must be a floating-point"):
        l2norm(torch.ones(3, 4, dtype=torch.long))


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 4, 33), (6, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(shape, dtype):
    x = torch.randn(*shape, dtype=F64)
    x[0] = 0  # an all-zero row stays finite and zero
    errors = errors_against_reference(partial(l2norm, backend="triton"), l2norm_torch, {"x": x}, dtype)
    assert max(errors.values()) < (1e-5 if dtype == torch.float32 else 2e-2), errors


@interpreted
def test_float64_refused_on_triton():
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        l2norm(torch.randn(4, 2, dtype=F64), backend="triton")
