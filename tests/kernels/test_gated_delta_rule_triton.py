"""The Triton gated delta rule (chunked and fused-recurrent), run on the CPU by Triton's
interpreter, against the fp64 token-by-token reference: outputs, final states and the
gradients of every input.

The tests marked ``interpreted`` run under TRITON_INTERPRET=1, started by
``test_triton_kernels_under_interpreter`` (see tests/interpreter.py).

Shapes are tiny and the kernels' K blocks and V tiles are forced down to 16, so K = 32 or
48 and V = 32 cross block boundaries, T = 70 ends on a partial chunk. The interpreter of
Triton 3.9 computes bf16 tl.dot wrongly, so the half-precision case here is fp16; bf16 is
checked on a GPU by the conformance suite (tests/gpu, `make test-gpu`).
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from memlab.kernels import KernelInputError
from memlab.kernels.compare import rel_err
from memlab.kernels.gated_delta_rule import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from tests.interpreter import INTERPRETED, interpreted, run_under_interpreter

pytest.importorskip("triton")

F64 = torch.float64
H = 2
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def _small_blocks_and_fresh_seed(request, monkeypatch):
    if INTERPRETED:
        from memlab.kernels.gated_delta_rule import triton_chunk_fwd

        for name in (
            "MAX_BLOCK_K",
            "MAX_BLOCK_V",
            "MAX_BLOCK_V_OUTPUT",
            "MAX_BLOCK_V_STATE_PASS",
            "MAX_BLOCK_V_SERIAL",
        ):
            monkeypatch.setattr(triton_chunk_fwd, name, 16)
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_inputs(
    T: int,
    K: int = 32,
    V: int = 32,
    batch: int = 2,
    gates: str = "mixed",
    num_states: int | None = 2,
    dtype: torch.dtype = torch.float32,
    normalized: bool = True,
) -> dict[str, torch.Tensor]:
    """Leaves in ``dtype`` (g, beta and the initial state in fp32); q, k unit-norm unless not
    ``normalized``; gates mixed (0, −20 and in between), strong (≈ −20) or zero."""
    q, k = torch.randn(batch, T, H, K, dtype=F64), torch.randn(batch, T, H, K, dtype=F64)
    q, k = (F.normalize(q, dim=-1), F.normalize(k, dim=-1)) if normalized else (3 * q, 3 * k)
    if gates == "mixed":
        g = F.logsigmoid(3 * torch.randn(batch, T, H, dtype=F64))
        pick = torch.randint(0, 3, g.shape)
        g = torch.where(pick == 0, 0.0, torch.where(pick == 1, -20.0, g))
    elif gates == "strong":
        g = -20 - torch.rand(batch, T, H, dtype=F64)
    else:
        g = torch.zeros(batch, T, H, dtype=F64)
    x = {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": torch.randn(batch, T, H, V, dtype=F64).to(dtype),
        "g": g.float(),
        "beta": torch.sigmoid(torch.randn(batch, T, H, dtype=F64)).float(),
    }
    if num_states is not None:
        x["initial_state"] = torch.randn(num_states, H, K, V, dtype=F64).float()
    return {name: t.requires_grad_() for name, t in x.items()}


def forward_backward(fn, inputs, cotangents=None, **kwargs):
    """{"o", "S", "d<input>"...} of fn with output_final_state=True, and the cotangents used."""
    o, S = fn(**inputs, output_final_state=True, **kwargs)
    if cotangents is None:
        cotangents = (torch.randn(o.shape, dtype=F64), torch.randn(S.shape, dtype=F64))
    loss = (o.to(F64) * cotangents[0]).sum() + (S.to(F64) * cotangents[1]).sum()
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return {"o": o, "S": S} | {f"d{n}": gr for n, gr in zip(inputs, grads, strict=True)}, cotangents


def check_against_naive(inputs, tol, **kwargs):
    reference_inputs = {n: t.detach().to(F64).requires_grad_() for n, t in inputs.items()}
    reference, cotangents = forward_backward(naive_recurrent_gated_delta_rule, reference_inputs, **kwargs)
    result, _ = forward_backward(chunk_gated_delta_rule, inputs, cotangents, backend="triton", **kwargs)
    errors = {name: rel_err(result[name], reference[name]) for name in reference}
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"relative errors above {tol:g}: {bad} (all: {errors})"
    return result


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
def test_chunk_takes_broadcast_output_gradients():
    """The gradients of o.sum() and final_state.sum() arrive broadcast (stride 0). The kernels
    read dense rows, so the op makes them contiguous first: a broadcast final-state gradient
    once had the backward read past its single element."""
    inputs = make_inputs(70, 32, 16, batch=2)

    def grads(fn, x, **kwargs):
        o, S = fn(**x, output_final_state=True, **kwargs)
        return torch.autograd.grad(o.sum() + S.sum(), list(x.values()))

    reference = {n: t.detach().to(F64).requires_grad_() for n, t in inputs.items()}
    want = grads(naive_recurrent_gated_delta_rule, reference)
    got = grads(chunk_gated_delta_rule, inputs, backend="triton")
    errors = {f"d{n}": rel_err(a, b) for n, a, b in zip(inputs, got, want, strict=True)}
    assert all(err < TOL[torch.float32] for err in errors.values()), errors


@interpreted
@pytest.mark.parametrize(
    ("T", "K", "V", "with_state", "l2norm"),
    [
        (1, 32, 32, True, False),
        (17, 16, 32, False, False),
        (70, 48, 32, True, False),
        (70, 32, 16, True, True),
    ],
)
def test_chunk_matches_naive(T, K, V, with_state, l2norm):
    batch = 1 if T == 70 else 2
    inputs = make_inputs(
        T, K, V, batch=batch, num_states=batch if with_state else None, normalized=not l2norm
    )
    result = check_against_naive(inputs, TOL[torch.float32], use_qk_l2norm_in_kernel=l2norm)
    assert result["o"].dtype == torch.float32 and result["S"].dtype == torch.float32


@interpreted
@pytest.mark.parametrize("gates", ["strong", "zero"])
def test_chunk_extreme_gates(gates):
    result = check_against_naive(
        make_inputs(70, 16, 16, batch=1, gates=gates, num_states=1), TOL[torch.float32]
    )
    assert all(torch.isfinite(t).all() for t in result.values())


@interpreted
def test_chunk_varlen_with_length_one_and_empty_segments():
    offsets = [0, 1, 18, 18, 70]
    inputs = make_inputs(70, batch=1, num_states=len(offsets) - 1)
    result = check_against_naive(
        inputs, TOL[torch.float32], cu_seqlens=torch.tensor(offsets, dtype=torch.int32)
    )
    assert result["S"].shape == (len(offsets) - 1, H, 32, 32)


@interpreted
def test_second_backward_over_one_graph_gives_the_same_gradients():
    """The backward once wrote its scratch into Ai, a tensor the forward saved: a second backward
    over the same graph (retain_graph=True) then gave other dk, dv, dg and dβ."""
    inputs = make_inputs(70, 16, 16, batch=1, num_states=1)
    o, S = chunk_gated_delta_rule(**inputs, output_final_state=True, backend="triton")
    loss = (o * torch.randn_like(o)).sum() + (S * torch.randn_like(S)).sum()
    first = torch.autograd.grad(loss, list(inputs.values()), retain_graph=True)
    second = torch.autograd.grad(loss, list(inputs.values()))
    for name, a, b in zip(inputs, first, second, strict=True):
        assert torch.equal(a, b), name


@interpreted
def test_chunk_fp16_inputs():
    result = check_against_naive(
        make_inputs(70, 16, 16, batch=1, num_states=1, dtype=torch.float16), TOL[torch.float16]
    )
    assert result["o"].dtype == result["dq"].dtype == torch.float16
    assert result["S"].dtype == result["dinitial_state"].dtype == torch.float32


@interpreted
@pytest.mark.parametrize(("K", "V"), [(1, 16), (8, 1), (3, 5)])
def test_small_heads_run_padded_and_keep_their_dtypes(K, V):
    """Heads under 16 run zero-padded in fp32; outputs and gradients come back in the inputs'
    shapes and dtypes."""
    result = check_against_naive(
        make_inputs(40, K, V, batch=1, num_states=1, dtype=torch.float16), TOL[torch.float16]
    )
    assert result["o"].shape[-1] == V and result["S"].shape[-2:] == (K, V)
    assert result["o"].dtype == result["dq"].dtype == result["dv"].dtype == torch.float16


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_small_heads_give_contiguous_outputs(dtype):
    """The padded path's outputs are not slices of the padded ones (MoM views o as [N, H·V])."""
    x = make_inputs(20, 8, 4, batch=1, num_states=1, dtype=dtype)
    o, state = chunk_gated_delta_rule(
        x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True, backend="triton"
    )
    assert o.is_contiguous() and state.is_contiguous()


@interpreted
def test_fused_recurrent_forward_matches_naive():
    offsets = [0, 1, 9, 17]
    x = {n: t.detach() for n, t in make_inputs(17, batch=1, num_states=3, normalized=False).items()}
    kwargs = {
        "cu_seqlens": torch.tensor(offsets),
        "use_qk_l2norm_in_kernel": True,
        "output_final_state": True,
    }
    o, S = fused_recurrent_gated_delta_rule(**x, backend="triton", **kwargs)
    o_ref, S_ref = naive_recurrent_gated_delta_rule(**{n: t.double() for n, t in x.items()}, **kwargs)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S, S_ref) < 1e-5


@interpreted
def test_fused_recurrent_refuses_gradients():
    inputs = make_inputs(3)
    with pytest.raises(KernelInputError, match="no backward"):
        fused_recurrent_gated_delta_rule(**inputs, backend="triton")


@interpreted
@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_fp64_is_refused_by_triton_and_auto_stays_on_torch_for_cpu(op):
    x = {n: t.detach().double() for n, t in make_inputs(3).items()}
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        op(**x, backend="triton")
    o_auto, _ = op(**x)
    o_torch, _ = op(**x, backend="torch")
    assert torch.equal(o_auto, o_torch)
