"""Gated RMSNorm: the PyTorch twin against ``F.rms_norm``, input checks, and (under Triton's
interpreter, started by ``test_triton_kernels_under_interpreter``) the Triton kernels against
the fp64 twin, output and the gradients of o, gate and weight, with several rows per program
and backward programs that end inside a tile.

Every test draws fresh random inputs; the seed is printed.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError
from memlab.kernels.compare import rel_err
from memlab.kernels.gated_rmsnorm import gated_rmsnorm, gated_rmsnorm_torch
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter
from tests.kernels.reference_check import errors_against_reference, fresh_seed

F64 = torch.float64
EPS = 1e-5


@pytest.fixture(autouse=True)
def _seed_and_small_tiles(monkeypatch):
    fresh_seed()
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    if INTERPRETED:
        from memlab.kernels.gated_rmsnorm import triton_gated_rmsnorm

        monkeypatch.setattr(triton_gated_rmsnorm, "_TILE", 256)
        monkeypatch.setattr(triton_gated_rmsnorm, "_BWD_ROWS", 6)


def inputs(*shape: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(*shape, dtype=F64), torch.randn(*shape, dtype=F64), torch.randn(shape[-1], dtype=F64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, F64])
def test_twin_matches_rms_norm(dtype):
    o, g, w = (t.to(dtype) for t in inputs(3, 5, 33))
    expected = F.rms_norm(o.double(), (33,), eps=EPS) * w.double() * F.silu(g.double())
    got = gated_rmsnorm(o, g, w, EPS, backend="torch")
    assert got.dtype == dtype
    assert rel_err(got, expected) < {torch.bfloat16: 8e-3, torch.float32: 1e-6, F64: 1e-12}[dtype]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(2, 4), torch.randn(2, 5), torch.randn(4)), "o and gate must have one shape"),
        ((torch.randn(2, 4), torch.randn(2, 4), torch.randn(5)), r"weight must have shape \[D=4\]"),
        (
            (torch.randn(2, 4), torch.ones(2, 4, dtype=torch.long), torch.randn(4)),
            "gate must be a floating-point",
        ),
    ],
)
def test_bad_inputs_are_refused_clearly(args, message):
    with pytest.raises(KernelInputError, match=message):
        gated_rmsnorm(*args)


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 9, 4, 33), (13, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(shape, dtype):
    o, gate, weight = inputs(*shape)
    triton_norm = partial(gated_rmsnorm, backend="triton")
    named = {"o": o, "gate": gate, "weight": weight}
    errors = errors_against_reference(triton_norm, gated_rmsnorm_torch, named, dtype, eps=EPS)
    assert max(errors.values()) < (1e-5 if dtype == torch.float32 else 2e-2), errors


@interpreted
def test_float64_refused_on_triton():
    o, g, w = inputs(2, 4)
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        gated_rmsnorm(o, g, w, backend="triton")
