"""Gated delta rule: the chunked and fused-recurrent PyTorch twins against the fp64
token-by-token reference (outputs, final states and the gradients of every input), plus
input validation and backend selection."""

from __future__ import annotations

import itertools
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

F64 = torch.float64
B, H, K, V = 2, 2, 16, 32  # K != V on purpose


@pytest.fixture(autouse=True)
def _fresh_seed_and_clean_env(request, monkeypatch):
    # A different (but reproducible) draw for every test and every parametrisation.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)


def make_inputs(
    T: int,
    *,
    batch: int = B,
    gates: str = "mixed",
    with_state: bool = True,
    normalized: bool = True,
    dtype: torch.dtype = F64,
    state_dtype: torch.dtype | None = None,
    num_states: int | None = None,
) -> dict[str, torch.Tensor]:
    """Leaf tensors (requires_grad) for one call; q, k unit-norm unless normalized=False."""
    q = torch.randn(batch, T, H, K, dtype=F64)
    k = torch.randn(batch, T, H, K, dtype=F64)
    if normalized:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    else:
        q, k = 3 * q, 3 * k  # far from unit norm, so in-kernel normalisation matters
    if gates == "mixed":
        g = F.logsigmoid(3 * torch.randn(batch, T, H, dtype=F64))
        pick = torch.randint(0, 3, g.shape)
        g = torch.where(pick == 0, 0.0, torch.where(pick == 1, -20.0, g))
    elif gates == "strong":
        g = -20 - torch.rand(batch, T, H, dtype=F64)
    elif gates == "zero":
        g = torch.zeros(batch, T, H, dtype=F64)
    else:
        raise ValueError(gates)
    inputs = {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": torch.randn(batch, T, H, V, dtype=F64).to(dtype),
        "g": g.to(dtype),
        "beta": torch.sigmoid(torch.randn(batch, T, H, dtype=F64)).to(dtype),
    }
    if with_state:
        n = batch if num_states is None else num_states
        inputs["initial_state"] = torch.randn(n, H, K, V, dtype=F64).to(state_dtype or dtype)
    return {name: x.requires_grad_() for name, x in inputs.items()}


def as_f64(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values in fp64, as fresh leaves (for the reference run)."""
    return {name: x.detach().to(F64).requires_grad_() for name, x in inputs.items()}


def forward_backward(fn, inputs, cotangents=None, **kwargs):
    """Run fn with output_final_state=True; return {"o", "S", "d<input>"...} and the cotangents used.

    ``fn`` gets the inputs as keyword arguments. The loss <o, do> + <S, dS> uses random
    cotangents (reused when given) so that every gradient path is exercised.
    """
    o, S = fn(**inputs, output_final_state=True, **kwargs)
    if cotangents is None:
        cotangents = (torch.randn(o.shape, dtype=F64), torch.randn(S.shape, dtype=F64))
    do, dS = cotangents
    loss = (o.to(F64) * do).sum() + (S.to(F64) * dS).sum()
    grads = torch.autograd.grad(loss, list(inputs.values()))
    result = {"o": o, "S": S} | {f"d{name}": gr for name, gr in zip(inputs, grads, strict=True)}
    return result, cotangents


def assert_close(result, reference, tol):
    errors = {name: rel_err(result[name], reference[name]) for name in reference}
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"relative errors above {tol:g}: {bad} (all: {errors})"


def check_against_naive(fn, inputs, tol, **kwargs):
    reference, cotangents = forward_backward(naive_recurrent_gated_delta_rule, as_f64(inputs), **kwargs)
    result, _ = forward_backward(fn, inputs, cotangents, **kwargs)
    assert_close(result, reference, tol)
    return result


@pytest.mark.parametrize("use_l2norm", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
def test_chunk_matches_naive(T, with_state, use_l2norm):
    inputs = make_inputs(T, with_state=with_state, normalized=not use_l2norm)
    check_against_naive(chunk_gated_delta_rule, inputs, 1e-10, use_qk_l2norm_in_kernel=use_l2norm)


@pytest.mark.parametrize("gates", ["strong", "zero", "mixed"])
def test_chunk_extreme_gates(gates):
    inputs = make_inputs(130, gates=gates)
    result = check_against_naive(chunk_gated_delta_rule, inputs, 1e-10)
    assert all(torch.isfinite(x).all() for x in result.values())


@pytest.mark.parametrize("T", [1, 65])
def test_fused_recurrent_matches_naive(T):
    inputs = make_inputs(T, normalized=False)
    check_against_naive(fused_recurrent_gated_delta_rule, inputs, 1e-10, use_qk_l2norm_in_kernel=True)


def test_chunk_matches_fused_recurrent():
    inputs = make_inputs(130)
    chunk, cotangents = forward_backward(chunk_gated_delta_rule, inputs, scale=0.3)
    fused, _ = forward_backward(fused_recurrent_gated_delta_rule, inputs, cotangents, scale=0.3)
    assert_close(chunk, fused, 1e-10)


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
@pytest.mark.parametrize("offsets", [[0, 1, 66, 130], [0, 64, 64, 65, 130]], ids=["1-65-64", "64-0-1-65"])
def test_varlen_equals_separate_sequences(op, offsets):
    N = len(offsets) - 1
    inputs = make_inputs(offsets[-1], batch=1, num_states=N)
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32)

    def separately(q, k, v, g, beta, initial_state, output_final_state):
        outputs, finals = [], []
        for n, (bos, eos) in enumerate(itertools.pairwise(offsets)):
            seq = slice(bos, eos)
            o_n, S_n = naive_recurrent_gated_delta_rule(
                *(x[:, seq] for x in (q, k, v, g, beta)),
                initial_state=initial_state[n : n + 1],
                output_final_state=output_final_state,
            )
            outputs.append(o_n)
            finals.append(S_n)
        return torch.cat(outputs, dim=1), torch.cat(finals)

    reference, cotangents = forward_backward(separately, as_f64(inputs))
    result, _ = forward_backward(op, inputs, cotangents, cu_seqlens=cu_seqlens)
    assert result["S"].shape == (N, H, K, V)
    assert_close(result, reference, 1e-10)


def test_varlen_int64_offsets_without_initial_state():
    inputs = make_inputs(70, batch=1, with_state=False)
    cu_seqlens = torch.tensor([0, 5, 70], dtype=torch.int64)
    reference, cotangents = forward_backward(
        naive_recurrent_gated_delta_rule, as_f64(inputs), cu_seqlens=cu_seqlens
    )
    result, _ = forward_backward(chunk_gated_delta_rule, inputs, cotangents, cu_seqlens=cu_seqlens)
    assert_close(result, reference, 1e-10)


def test_prefill_then_decode_matches_one_pass():
    """Chunked prefill, then fused-recurrent decoding one token at a time with the carried state."""
    inputs = {name: x.detach() for name, x in make_inputs(70).items()}
    full, full_state = chunk_gated_delta_rule(**inputs, output_final_state=True)
    prefix = {name: x[:, :66] for name, x in inputs.items() if name != "initial_state"}
    outputs = [
        chunk_gated_delta_rule(**prefix, initial_state=inputs["initial_state"], output_final_state=True)
    ]
    for t in range(66, 70):
        token = {name: x[:, t : t + 1] for name, x in inputs.items() if name != "initial_state"}
        outputs.append(
            fused_recurrent_gated_delta_rule(**token, initial_state=outputs[-1][1], output_final_state=True)
        )
    assert rel_err(torch.cat([o for o, _ in outputs], dim=1), full) < 1e-12
    assert rel_err(outputs[-1][1], full_state) < 1e-12


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_fp32_against_fp64_reference(op):
    inputs = make_inputs(130, dtype=torch.float32)
    result = check_against_naive(op, inputs, 1e-5)
    assert result["o"].dtype == result["S"].dtype == torch.float32


def test_bf16_inputs():
    inputs = make_inputs(130, dtype=torch.bfloat16, state_dtype=torch.float32)
    result = check_against_naive(chunk_gated_delta_rule, inputs, 2e-2)
    assert result["o"].dtype == torch.bfloat16
    assert result["S"].dtype == torch.float32
    assert result["dq"].dtype == torch.bfloat16 and result["dinitial_state"].dtype == torch.float32


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_defaults(op):
    inputs = {name: x.detach() for name, x in make_inputs(3, with_state=False).items()}
    o, S = op(**inputs)
    assert S is None and o.shape == (B, 3, H, V) and o.dtype == F64
    reference, _ = naive_recurrent_gated_delta_rule(**inputs, scale=K**-0.5)
    assert rel_err(o, reference) < 1e-12


# --- validation ---------------------------------------------------------------------


def _valid(batch=B, T=5):
    return {name: x.detach() for name, x in make_inputs(T, batch=batch, dtype=torch.float32).items()}


def _packed(offsets, dtype=torch.int32, **changes):
    kwargs = _valid(batch=1, T=5) | {"cu_seqlens": torch.tensor(offsets, dtype=dtype)}
    kwargs["initial_state"] = torch.zeros(max(len(offsets) - 1, 1), H, K, V)
    return kwargs | changes


BAD_INPUTS = {
    "q rank": (lambda kw: kw | {"q": kw["q"][0]}, "q must be [B, T, H, K]"),
    "k shape": (lambda kw: kw | {"k": kw["k"][:, :4]}, "k has shape"),
    "v shape": (lambda kw: kw | {"v": kw["v"][:, :, :1]}, "v must be [B, T, H, V]"),
    "g shape": (lambda kw: kw | {"g": kw["g"][..., None]}, "g must be [B, T, H]"),
    "beta shape": (lambda kw: kw | {"beta": kw["beta"][:1]}, "beta must be [B, T, H]"),
    "K > 256": (
        lambda kw: kw | {"q": torch.zeros(B, 5, H, 257), "k": torch.zeros(B, 5, H, 257)},
        "K=257",
    ),
    "V > 256": (lambda kw: kw | {"v": torch.zeros(B, 5, H, 300)}, "V=300"),
    "q int": (lambda kw: kw | {"q": kw["q"].long()}, "q must be a float tensor"),
    "beta int": (lambda kw: kw | {"beta": kw["beta"].long()}, "beta must be a float tensor"),
    "mixed qkv dtypes": (lambda kw: kw | {"v": kw["v"].double()}, "q, k, v must share one dtype"),
    "not a tensor": (lambda kw: kw | {"g": kw["g"].tolist()}, "g must be a torch.Tensor"),
    "device": (lambda kw: kw | {"g": kw["g"].to("meta")}, "g is on meta"),
    "state shape": (
        lambda kw: kw | {"initial_state": kw["initial_state"][:1]},
        "initial_state must be [N, H, K, V]",
    ),
    "state int": (
        lambda kw: kw | {"initial_state": kw["initial_state"].int()},
        "initial_state must be a float",
    ),
    "scale type": (lambda kw: kw | {"scale": "0.5"}, "scale must be a number"),
    "cu float": (lambda kw: _packed([0, 2, 5], dtype=torch.float32), "cu_seqlens must be int32 or int64"),
    "cu 2-D": (lambda kw: _packed([0, 5]) | {"cu_seqlens": torch.tensor([[0, 5]])}, "cu_seqlens must be 1-D"),
    "cu not from 0": (lambda kw: _packed([1, 2, 5]), "cu_seqlens must start at 0"),
    "cu decreasing": (lambda kw: _packed([0, 3, 2, 5]), "cu_seqlens must be non-decreasing"),
    "cu last != T": (lambda kw: _packed([0, 2, 4]), "cu_seqlens must end at T=5"),
    "cu with B > 1": (lambda kw: kw | {"cu_seqlens": torch.tensor([0, 5])}, "batch size must be 1"),
    "cu state count": (
        lambda kw: _packed([0, 2, 5], initial_state=torch.zeros(1, H, K, V)),
        "initial_state must be [N, H, K, V] = [2,",
    ),
}


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_refused(op, case):
    mutate, message = BAD_INPUTS[case]
    kwargs = mutate(_valid())
    with pytest.raises(KernelInputError, match="^" + op.__name__) as excinfo:
        op(**kwargs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, fused_recurrent_gated_delta_rule])
def test_backend_selection(op, monkeypatch):
    kwargs = _valid()
    reference, _ = op(**kwargs, backend="torch")
    with pytest.raises(KernelInputError, match="unknown backend='cuda'"):
        op(**kwargs, backend="cuda")
    with pytest.raises(KernelInputError, match="needs TRITON_INTERPRET=1"):
        op(**kwargs, backend="triton")
    monkeypatch.setenv("MEMLAB_KERNEL_BACKEND", "fast")
    with pytest.raises(KernelInputError, match=r"unknown \$MEMLAB_KERNEL_BACKEND='fast'"):
        op(**kwargs)
    monkeypatch.setenv("MEMLAB_KERNEL_BACKEND", "torch")
    assert torch.equal(op(**kwargs)[0], reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, F64])
def test_l2norm_keeps_dtype_and_normalises_in_fp32(dtype):
    # Under CUDA autocast a bf16 q, k times an fp32 norm came out fp32 next to a bf16 v,
    # which the Triton kernels refuse to compile: the result must be in x's own dtype.
    from memlab.kernels.l2norm import l2norm_torch as l2norm

    x = torch.randn(3, 5, 64, dtype=F64).to(dtype)
    y = l2norm(x)
    assert y.dtype == dtype
    expected = F.normalize(x.double(), dim=-1)
    # fp64: the 1e-6 under the square root, not rounding, sets the difference
    tol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6, F64: 1e-6}[dtype]
    assert rel_err(y, expected) < tol
    assert torch.equal(l2norm(torch.zeros(2, 8, dtype=dtype)), torch.zeros(2, 8, dtype=dtype))
