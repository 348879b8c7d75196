"""The Triton selective scan and decode step, run on the CPU by Triton's interpreter, against
the fp64 token-by-token reference: outputs, last state and the gradients of every input.

The tests marked ``interpreted`` run under TRITON_INTERPRET=1, started by
``test_triton_kernels_under_interpreter`` (see tests/interpreter.py).

Shapes are tiny and the kernels' block sizes are forced small (states stored every 16
steps, forward chunks of 8 steps, 2 or 4 channels per program), so the tests cross chunk,
stored-state and channel-block boundaries and end on partial chunks. N from 1 to 17 puts one to
eight states on each of up to 4 lanes per channel, some of them unused when N is not a power of
two.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from memlab.kernels.backend import KernelInputError
from memlab.kernels.selective_scan import naive_selective_scan, selective_scan, selective_state_update
from tests.interpreter import interpreted, run_under_interpreter
from tests.kernels.test_selective_scan import assert_close, decode, reference, rel_err, run

triton = pytest.importorskip("triton")

OPTIONAL = ("D", "z", "delta_bias")
BATCH = 2


@pytest.fixture(autouse=True)
def _small_blocks_and_fresh_seed(request, monkeypatch):
    from memlab.kernels.selective_scan import triton_scan, triton_state_update

    # States stored every 16 steps; forward programs of 2 channels in chunks of 8 steps,
    # backward programs of 4 channels walking the 16-step blocks, so the backward's programs
    # differ from those of the forward that stored the states. The decoding step's channel
    # block shrinks to 2 (a small batch has too few programs), so its programs split channels too.
    monkeypatch.setattr(triton_scan, "_STATE_EVERY", 16)
    monkeypatch.setattr(triton_scan, "_FWD_BLOCK_D", 2)
    monkeypatch.setattr(triton_scan, "_FWD_CHUNK_T", 8)
    monkeypatch.setattr(triton_scan, "_BWD_BLOCK_D", 4)
    monkeypatch.setattr(triton_state_update, "_MIN_BLOCK_D", 2)
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    seed = zlib.crc32(request.node.nodeid.encode())
    print(f"seed={seed}")
    torch.manual_seed(seed)


def make_inputs(
    L: int,
    N: int = 4,
    dim: int = 8,
    groups_B: int | None = None,
    groups_C: int | None = None,
    softplus: bool = True,
    optional: tuple[str, ...] = OPTIONAL,
    delta_range: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """fp64 inputs; delta is positive after bias (and softplus), as in Mamba."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64)

    def bc(groups: int | None) -> torch.Tensor:
        shape = (BATCH, N, L) if groups is None else (BATCH, groups, N, L)
        return randn(*shape)

    if delta_range is not None:
        lo, hi = delta_range
        delta = lo + (hi - lo) * torch.rand(BATCH, dim, L, dtype=torch.float64)
    elif softplus:
        delta = randn(BATCH, dim, L)
    else:
        delta = 0.5 * torch.rand(BATCH, dim, L, dtype=torch.float64)
    x = {
        "u": randn(BATCH, dim, L),
        "delta": delta,
        "A": -torch.exp(randn(dim, N)),
        "B": bc(groups_B),
        "C": bc(groups_C),
        "D": randn(dim),
        "z": randn(BATCH, dim, L),
        "delta_bias": randn(dim) - 3.0 if softplus else 0.1 * torch.rand(dim, dtype=torch.float64),
    }
    return {k: v for k, v in x.items() if k not in OPTIONAL or k in optional}


def triton_scan(**kwargs):
    return selective_scan(**kwargs, backend="triton")


def check(x: dict[str, torch.Tensor], softplus: bool, dtype: torch.dtype = torch.float32, tol: float = 1e-4):
    dtypes = dict.fromkeys(x, dtype)
    got = run(triton_scan, x, softplus, dtypes)
    assert all(torch.isfinite(t).all() for t in (got[0], got[1], *got[2].values()))
    assert_close(got, reference(x, softplus, dtypes), tol=tol)
    return got


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__, workers=2)


@interpreted
@pytest.mark.parametrize(("L", "N"), [(1, 1), (5, 4), (37, 4)])
def test_matches_reference(L, N):
    check(make_inputs(L, N), softplus=True)


@interpreted
@pytest.mark.parametrize("N", [3])
def test_state_counts_not_a_power_of_two(N):
    check(make_inputs(37, N, groups_B=2), softplus=True)


@interpreted
@pytest.mark.parametrize(("dim", "groups_B", "groups_C"), [(8, 2, 4), (6, 3, 3), (3, None, None)])
def test_groups_and_odd_dims(dim, groups_B, groups_C):
    check(make_inputs(37, 4, dim=dim, groups_B=groups_B, groups_C=groups_C), softplus=True)


@interpreted
@pytest.mark.parametrize(
    ("optional", "softplus"),
    [(OPTIONAL, False), ((), True), (("z",), False)],
)
def test_optional_inputs(optional, softplus):
    check(make_inputs(21, 4, softplus=softplus, optional=optional), softplus)


@interpreted
@pytest.mark.parametrize(
    ("delta_range", "softplus"),
    [((10.0, 50.0), True), ((0.0, 1e-4), False), ((-30.0, -20.0), True)],
    ids=["large", "tiny", "softplus_tiny"],
)
def test_extreme_delta(delta_range, softplus):
    # softplus(-30..-20) is 1e-13..2e-9: a plain log(1 + e^x) would round it to 0 in fp32.
    x = make_inputs(29, 4, softplus=softplus, delta_range=delta_range, optional=("z",))
    check(x, softplus)


@interpreted
@pytest.mark.parametrize("L", [21])
def test_decays_that_underflow_give_finite_gradients(L):
    x = make_inputs(L, 4, delta_range=(50.0, 50.0))
    x["A"] = torch.full_like(x["A"], -16.0)
    check(x, softplus=True)


@interpreted
def test_bf16_inputs():
    x = make_inputs(37, 4, groups_B=2, groups_C=2)
    dtypes = {k: torch.bfloat16 for k in ("u", "delta", "B", "C", "z")}
    dtypes.update({k: torch.float32 for k in ("A", "D", "delta_bias")})
    y, state, grads = got = run(triton_scan, x, True, dtypes)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert all(grads[k].dtype == dtypes[k] for k in grads)
    assert_close(got, reference(x, True, dtypes), tol=2e-2)


FP16, BF16, FP32 = (torch.float16, 5e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-4)


# Each shape in one input dtype, every dtype on several shapes (the GPU conformance suite
# crosses all of them; here the interpreter's time is the limit).
@interpreted
@pytest.mark.parametrize(
    ("L", "N", "dim", "groups", "optional", "softplus", "dtype", "tol"),
    [
        (8, 1, 8, None, OPTIONAL, True, *FP16),
        (40, 4, 8, 2, OPTIONAL, True, *BF16),  # two stored blocks, ends on a partial chunk of the 3rd
        (48, 6, 5, None, ("z",), False, *FP32),  # 2 states on each of 4 lanes, 2 of them unused;
        # a partial channel block
        (24, 8, 6, 3, (), True, *FP16),
        (44, 12, 4, 2, OPTIONAL, True, *BF16),  # 3 states per lane; ends part-way through a chunk
    ],
)
def test_each_dtype(L, N, dim, groups, optional, softplus, dtype, tol):
    x = make_inputs(L, N, dim=dim, groups_B=groups, groups_C=groups, softplus=softplus, optional=optional)
    dtypes = {k: dtype for k in ("u", "delta", "B", "C", "z")}
    dtypes.update({k: torch.float32 for k in ("A", "D", "delta_bias")})
    assert_close(run(triton_scan, x, softplus, dtypes), reference(x, softplus, dtypes), tol=tol)


@interpreted
def test_one_output_used():
    # Only y, or only the last state, reaches the loss: the other gradient is None in the
    # backward, not a tensor of zeros.
    x = {k: v.float() for k, v in make_inputs(19, 4, groups_B=2).items()}
    y_ref, state_ref = naive_selective_scan(**{k: v.double() for k, v in x.items()}, delta_softplus=True,
                                            return_last_state=True)  # fmt: skip
    for pick in (0, 1):
        leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
        out = triton_scan(**leaves, delta_softplus=True, return_last_state=True)[pick]
        assert rel_err(out, (y_ref, state_ref)[pick]) < 1e-5
        grads = torch.autograd.grad(out.square().sum(), list(leaves.values()), allow_unused=True)
        ref_leaves = {k: v.double().detach().requires_grad_() for k, v in x.items()}
        ref_out = naive_selective_scan(**ref_leaves, delta_softplus=True, return_last_state=True)[pick]
        ref_grads = torch.autograd.grad(ref_out.square().sum(), list(ref_leaves.values()), allow_unused=True)
        for name, g, r in zip(leaves, grads, ref_grads, strict=True):
            if r is None:
                assert g is None or not g.any(), name
            else:
                assert rel_err(g, r) < 1e-4, name


@interpreted
@pytest.mark.parametrize("L", [19])
def test_gate_without_grad(L):
    # z needs no gradient: the forward keeps no y for dz, the backward computes none, and every
    # other gradient is unchanged.
    x = {k: v.float() for k, v in make_inputs(L, 4, groups_B=2).items()}
    grads = []
    for fn, dtype in ((triton_scan, torch.float32), (naive_selective_scan, torch.float64)):
        leaves = {k: v.to(dtype).detach().requires_grad_(k != "z") for k, v in x.items()}
        y = fn(**leaves, delta_softplus=True)
        wanted = [v for k, v in leaves.items() if k != "z"]
        grads.append(torch.autograd.grad((y * y.detach().sin()).sum(), wanted))
    for g, r in zip(*grads, strict=True):
        assert rel_err(g, r) < 1e-4


@interpreted
def test_state_slots_in_a_runtime_loop():
    # N = 65: 32 state slots on each of 4 lanes (63 of the 128 states unused), past the unrolled
    # 16, so the forward loops over them at run time; two chunks carry the states across an edge.
    check(make_inputs(17, 65, dim=2), softplus=True)


@interpreted
@pytest.mark.parametrize(("L", "N"), [(40, 16)])  # N = 16: 4 states on each of 4 lanes
def test_forward_without_grad_and_non_contiguous(L, N):
    # Nothing stored for a backward: the inference path.
    x = {k: v.float() for k, v in make_inputs(L, N).items()}
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v) for k, v in x.items()}
    with torch.no_grad():
        y, state = triton_scan(**views, delta_softplus=True, return_last_state=True)
    y_ref, state_ref = naive_selective_scan(
        **{k: v.double() for k, v in x.items()}, delta_softplus=True, return_last_state=True
    )
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


@interpreted
def test_float64_refused_on_triton():
    x = make_inputs(5, 4)
    with pytest.raises(KernelInputError, match="float64 inputs need backend='torch'"):
        triton_scan(**x)


@interpreted
@pytest.mark.parametrize(
    ("optional", "softplus", "groups"), [(OPTIONAL, True, 2), ((), False, None)], ids=["all", "bare"]
)
def test_state_update_steps_reproduce_scan(optional, softplus, groups):
    x = make_inputs(6, 4, dim=6, groups_B=groups, groups_C=groups, softplus=softplus, optional=optional)
    y_ref, state_ref = naive_selective_scan(**x, delta_softplus=softplus, return_last_state=True)
    # The state is a strided view into a larger cache: it must be updated where it lives.
    cache = torch.zeros(BATCH, 6, 2, 4).transpose(0, 2)
    y = decode({k: v.float() for k, v in x.items()}, cache[1].transpose(0, 1), 0, softplus, "triton")
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(cache[1].transpose(0, 1), state_ref) < 1e-5
    assert not cache[0].any()


@interpreted
def test_scan_prefix_then_decode():
    x = {k: v.float() for k, v in make_inputs(20, 4, groups_B=2, groups_C=4).items()}
    y_full, state_full = naive_selective_scan(**x, delta_softplus=True, return_last_state=True)
    head = {k: (v[..., :17] if v.dim() >= 3 else v) for k, v in x.items()}
    y_head, state = triton_scan(**head, delta_softplus=True, return_last_state=True)
    y_tail = decode(x, state, 17, True, "triton")
    assert y_tail.dtype == torch.float32
    assert rel_err(torch.cat((y_head, y_tail), dim=-1), y_full) < 1e-5
    assert rel_err(state, state_full) < 1e-5


@interpreted
def test_state_update_refuses_inputs_that_require_grad():
    x = make_inputs(1, 4)
    step = {k: (v[..., 0] if v.dim() >= 3 else v).float() for k, v in x.items()}
    state = torch.zeros(BATCH, 8, 4)
    A = step["A"].requires_grad_()
    args = (state, step["u"], step["delta"], A, step["B"], step["C"])
    with pytest.raises(KernelInputError, match=r"^selective_state_update: .* A require grad"):
        selective_state_update(*args, backend="triton")
    assert not state.any()
    with torch.no_grad():
        selective_state_update(*args, backend="triton")
    assert state.any()


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """t [batch, dim, L] stored as [batch, L, dim]."""
    return t.mT.contiguous().mT


@interpreted
@pytest.mark.parametrize("L", [40])
def test_channels_last_inputs(L):
    # A Mamba layer's activations come as [batch, L, dim]: read as they are (y and the
    # gradients in that layout too), and z as a half of a wider tensor (copied to the layout).
    x = make_inputs(L, 4, dim=6)
    wide = torch.cat([x["u"], x["z"]], dim=1)  # [batch, 2·dim, L]
    x |= {"u": _channels_last(x["u"]), "delta": _channels_last(x["delta"])}
    x["z"] = _channels_last(wide)[:, 6:]
    y, _, grads = check(x, softplus=True)
    assert y.mT.is_contiguous() and grads["u"].mT.is_contiguous() and grads["delta"].mT.is_contiguous()


@interpreted
def test_mixed_layouts():
    # u time-contiguous, delta stored channels-last: delta is copied to u's layout.
    x = make_inputs(21, 4)
    x["delta"] = _channels_last(x["delta"])
    y, _, grads = check(x, softplus=True)
    assert y.is_contiguous() and grads["delta"].is_contiguous()


def test_a_tensor_both_layouts_describe_counts_as_time_contiguous():
    # With dim or L of 1 a tensor is stored both ways: it takes the time-contiguous kernels.
    from memlab.kernels.selective_scan.triton_scan import _channels_last

    for shape in [(2, 5, 1), (2, 1, 5), (1, 1, 1)]:
        assert not _channels_last(torch.empty(shape))
    assert _channels_last(torch.empty(2, 7, 5).mT) and not _channels_last(torch.empty(2, 5, 7))
