"""Causal depthwise conv1d: the PyTorch twin against the fp64 reference, the reference itself
against a direct sum, causality, packed sequences, input checks, and (under Triton's
interpreter, started by ``test_triton_kernels_under_interpreter``) the Triton kernels on tiny
shapes with their tiles forced small, outputs and gradients of every input.

Every test draws fresh random inputs; the seed is printed, so a failure's captured output says
how to reproduce it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from memlab.kernels import causal_conv1d
from memlab.kernels.backend import KernelInputError
from memlab.kernels.causal_conv1d import naive_causal_conv1d
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter
from tests.kernels.reference_check import errors_against_reference, fresh_seed

F64 = torch.float64
# Shapes (B, T, C, W, cu_seqlens): rows shorter than the window, widths 1-4, channel counts
# off the tiles, packed sequences with empty and length-1 ones at either end.
SHAPES = [
    (2, 11, 6, 4, None),
    (3, 2, 5, 4, None),
    (2, 9, 7, 1, None),
    (1, 13, 5, 3, [0, 1, 1, 6, 13]),
    (1, 9, 9, 4, [0, 0, 4, 8, 9]),
]


@pytest.fixture(autouse=True)
def _seed_and_small_tiles(monkeypatch):
    fresh_seed()
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    if INTERPRETED:
        from memlab.kernels.causal_conv1d import triton_conv

        # Tiles of 4 rows and 4 channels, backward programs of 8 rows in 4-row steps: every
        # shape crosses tile and program boundaries.
        monkeypatch.setattr(triton_conv, "_BLOCK_T", 4)
        monkeypatch.setattr(triton_conv, "_BLOCK_C", 4)
        monkeypatch.setattr(triton_conv, "_BWD_ROWS", 8)
        monkeypatch.setattr(triton_conv, "_BWD_BLOCK_T", 4)
        monkeypatch.setattr(triton_conv, "_BWD_BLOCK_C", 4)


def conv_inputs(B, T, C, W, bias: bool) -> dict[str, torch.Tensor | None]:
    return {
        "x": torch.randn(B, T, C, dtype=F64),
        "weight": torch.randn(C, W, dtype=F64),
        "bias": torch.randn(C, dtype=F64) if bias else None,
    }


def assert_matches_reference(op, inputs: dict, dtype: torch.dtype, tol: float, **kwargs) -> None:
    inputs = {name: t for name, t in inputs.items() if t is not None}
    errors = errors_against_reference(op, naive_causal_conv1d, inputs, dtype, **kwargs)
    assert max(errors.values()) < tol, errors


def test_reference_is_the_direct_sum():
    x, w, b = torch.randn(2, 7, 3, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64)
    padded = F.pad(x, (0, 0, 3, 0))
    expected = F.silu(b + sum(w[:, j] * padded[:, j : j + 7] for j in range(4)))
    assert torch.allclose(naive_causal_conv1d(x, w, b), expected)


@pytest.mark.parametrize(("B", "T", "C", "W", "offsets"), SHAPES)
@pytest.mark.parametrize("activation", ["silu", None])
def test_torch_twin_matches_reference(B, T, C, W, offsets, activation):
    cu = None if offsets is None else torch.tensor(offsets)
    kwargs = {"cu_seqlens": cu, "activation": activation}
    inputs = conv_inputs(B, T, C, W, bias=activation is None)
    assert_matches_reference(partial(causal_conv1d, backend="torch"), inputs, F64, 1e-12, **kwargs)


def test_packed_sequences_equal_separate_rows():
    x, w = torch.randn(1, 10, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    packed = causal_conv1d(x, w, cu_seqlens=torch.tensor([0, 3, 3, 10]), backend="torch")
    parts = [causal_conv1d(x[:, a:b], w, backend="torch") for a, b in ((0, 3), (3, 10))]
    assert torch.allclose(packed, torch.cat(parts, dim=1))


def test_twin_computes_in_fp32_under_autocast():
    x, w = torch.randn(2, 9, 4).bfloat16(), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = causal_conv1d(x, w, backend="torch")
    assert torch.equal(autocast, causal_conv1d(x, w, backend="torch"))


def test_no_output_depends_on_a_later_token():
    x, w = torch.randn(1, 12, 3, dtype=F64, requires_grad=True), torch.randn(3, 4, dtype=F64)
    y = causal_conv1d(x, w, cu_seqlens=torch.tensor([0, 5, 12]), backend="torch")
    for t in range(12):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        touched = grad[0].abs().sum(-1).nonzero().flatten()
        start = 0 if t < 5 else 5
        assert touched.min() >= max(start, t - 3) and touched.max() == t


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.randn(2, 3)}, r"x must have shape \[B, T, C\]"),
        ({"weight": torch.randn(5, 4)}, r"weight must have shape \[C=4, W >= 1\]"),
        ({"bias": torch.randn(3)}, r"bias must have shape \[C=4\]"),
        ({"activation": "relu"}, "activation must be None or 'silu'"),
        ({"cu_seqlens": torch.tensor([0, 3, 6])}, "B must be 1, got B=2"),
        ({"cu_seqlens": torch.tensor([0.0, 6.0])}, "1-D integer tensor"),
        ({"x": torch.randn(2, 6, 4).long()}, "x must be a floating-point torch.Tensor"),
        ({"backend": "cuda"}, "unknown backend='cuda'"),
    ],
)
def test_bad_inputs_are_refused_clearly(kwargs, message):
    args = {"x": torch.randn(2, 6, 4), "weight": torch.randn(4, 3)} | kwargs
    with pytest.raises(KernelInputError, match=message):
        causal_conv1d(**args)


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize(("B", "T", "C", "W", "offsets"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_triton_conv_matches_reference(B, T, C, W, offsets, bias):
    cu = None if offsets is None else torch.tensor(offsets, dtype=torch.int32)
    inputs = conv_inputs(B, T, C, W, bias)
    assert_matches_reference(
        partial(causal_conv1d, backend="triton"), inputs, torch.float32, 1e-5, cu_seqlens=cu
    )


@interpreted
def test_triton_conv_without_activation_bf16_and_strided():
    inputs = conv_inputs(2, 10, 6, 4, bias=True)
    x = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)  # time is the outer stride
    triton_conv = partial(causal_conv1d, backend="triton")
    assert_matches_reference(triton_conv, inputs | {"x": x}, torch.float32, 1e-5, activation=None)
    assert_matches_reference(triton_conv, inputs, torch.bfloat16, 2e-2)


@interpreted
def test_float64_refused_on_triton():
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        causal_conv1d(torch.randn(1, 4, 2, dtype=F64), torch.randn(2, 3, dtype=F64), backend="triton")
