"""Routed combine: the PyTorch twin against an explicit loop, input checks, and (under Triton's
interpreter, started by ``test_triton_kernels_under_interpreter``) the Triton kernels against
the fp64 twin, output and the gradients of values and weights, with rows no index names.

Every test draws fresh random inputs; the seed is printed.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from memlab.kernels import combine_routed
from memlab.kernels.backend import KernelInputError
from memlab.kernels.combine_routed import combine_routed_torch
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter
from tests.kernels.reference_check import errors_against_reference, fresh_seed

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed_and_small_tiles(monkeypatch):
    fresh_seed()
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
    triton_combine = partial(combine_routed, backend="triton")
    named = {"values": values, "weights": weights}
    errors = errors_against_reference(triton_combine, combine_routed_torch, named, dtype, index=index)
    assert max(errors.values()) < (1e-5 if dtype == torch.float32 else 2e-2), errors
    leaf = values.to(dtype).requires_grad_()
    (grad,) = torch.autograd.grad(
        combine_routed(leaf, index, weights.to(dtype), backend="triton").sum(), leaf
    )
    unpicked = torch.ones(N, dtype=torch.bool)
    unpicked[index.flatten()] = False
    assert not grad[unpicked].any()


@interpreted
def test_float64_refused_on_triton():
    values, index, weights = inputs(6, 2, 2, 3)
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        combine_routed(values, index, weights, backend="triton")
