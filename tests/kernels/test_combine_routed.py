"""Routed combine: the PyTorch twin against an explicit loop, input checks, and (under Triton's
interpreter, started by ``test_triton_kernels_under_interpreter``) the Triton kernels against
the fp64 twin, output and the gradients of values and weights, with rows no index names.

Every test draws fresh random inputs; the seed is printed.
"""

from __future__ import annotations

import os

import pytest
import torch

from memlab.kernels import combine_routed
from memlab.kernels.backend import KernelInputError
from memlab.kernels.combine_routed import combine_routed_torch
from memlab.kernels.compare import rel_err
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed_and_small_tiles(monkeypatch):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    torch.manual_seed(seed)
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    if INTERPRETED:
        from memlab.kernels.combine_routed import triton_combine

        monkeypatch.setattr(triton_combine, "_BLOCK_R", 2)
        monkeypatch.setattr(triton_combine, "_BLOCK_F", 8)


def inputs(N: int, R: int, S: int, F: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """values [N, F], distinct picks [R, S] (N > R·S leaves rows unpicked), weights [R, S]."""
    index = torch.randperm(N)[: R * S].view(R, S)
    return torch.randn(N, F, dtype=F64), index, torch.rand(R, S, dtype=F64)


def test_twin_is_the_weighted_sum_of_the_picked_rows():
    values, index, weights = inputs(9, 3, 2, 5)
    expected = torch.stack([sum(weights[r, s] * values[index[r, s]] for s in range(2)) for r in range(3)])
    assert torch.allclose(combine_routed(values, index, weights, backend="torch"), expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(4), torch.zeros(2, 1, dtype=torch.long), torch.rand(2, 1)), "values must be a 2-D"),
        (
            (torch.randn(4, 3), torch.zeros(2, 2, dtype=torch.long), torch.rand(2, 1)),
            "index must be an integer",
        ),
        ((torch.randn(4, 3), torch.zeros(2, 1), torch.rand(2, 1)), "index must be an integer"),
    ],
)
def test_bad_inputs_are_refused_clearly(args, message):
    with pytest.raises(KernelInputError, match=message):
        combine_routed(*args)


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize(("N", "R", "S", "F"), [(12, 4, 3, 20), (10, 3, 3, 8), (7, 7, 1, 5), (40, 5, 2, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(N, R, S, F, dtype):
    values, index, weights = inputs(N, R, S, F)
    values = values.to(dtype)
    ref_leaves = [values.double().requires_grad_(), weights.clone().requires_grad_()]
    ref = combine_routed_torch(ref_leaves[0], index, ref_leaves[1])
    dy = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
    leaves = [values.clone().requires_grad_(), weights.float().requires_grad_()]
    got = combine_routed(leaves[0], index, leaves[1], backend="triton")
    grads = torch.autograd.grad(got, leaves, dy.to(dtype))
    assert got.dtype == grads[0].dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    errors = [rel_err(got, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True)]
    assert max(errors) < tol, errors
    unpicked = torch.ones(N, dtype=torch.bool)
    unpicked[index.flatten()] = False
    assert not grads[0][unpicked].any()


@interpreted
def test_float64_refused_on_triton():
    values, index, weights = inputs(6, 2, 2, 3)
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        combine_routed(values, index, weights, backend="triton")
