"""Shapes that once failed on a GPU, kept as fixed cases of the conformance checks."""

from __future__ import annotations

import pytest
import torch

from tests.conformance.check import report
from tests.conformance.draw import case_seed
from tests.conformance.layers import MOM
from tests.conformance.ops import FAMILIES, GDN_CHUNK

GDN = {"H": 1, "h0": False, "gates": "mixed", "l2norm_in_kernel": False}
L2 = {"l2norm_in_kernel": True}


@pytest.mark.parametrize(
    "spec",
    [
        # Head size 16 in fp32 killed the process with an illegal memory access.
        GDN | {"dtype": "fp32", "K": 16, "V": 48, "B": 3, "T": 129},
        GDN | {"dtype": "fp32", "K": 16, "V": 32, "B": 3, "T": 129},
        GDN | {"dtype": "fp32", "K": 16, "V": 32, "B": 1, "T": 129, "docs": [0, 1, 1, 64, 129]},
        # In bf16, K or V of 1 read out of bounds (intra_dv at K = 1, dqkw at V = 1), and K = 1
        # missed the initial state's gradient by 5 %.
        GDN | {"dtype": "bf16", "K": 1, "V": 16, "B": 3, "T": 129, "h0": True},
        GDN | {"dtype": "bf16", "K": 8, "V": 1, "B": 3, "T": 129, "h0": True},
        GDN | {"dtype": "bf16", "K": 1, "V": 1, "B": 3, "T": 129, "h0": True},
        # 500 cases at seed 20261206 (H100, Triton 3.6): V tiles of 32 beside K blocks of 64 in
        # 16-bit gave wrong u and o (prepare and output kernels: fp16 K 40 or 48 with V 16 or 32;
        # bf16 K 64, V 24), wrong dk and dbeta (fp16 K 48, V 32), an illegal access in the
        # backward's state pass (fp16 K 64, V 32) and worker-ending CUDA errors (16-bit, K 40 to
        # 64, V 16 or 24). Tiles are now at least 64 wide.
        GDN | {"dtype": "fp16", "K": 48, "V": 32, "H": 2, "B": 1, "T": 63, "gates": "uniform"},
        GDN | {"dtype": "fp16", "K": 40, "V": 16, "H": 8, "B": 1, "T": 63},
        GDN | {"dtype": "fp16", "K": 40, "V": 32, "H": 7, "B": 3, "T": 127, "gates": "uniform"},
        GDN | {"dtype": "bf16", "K": 64, "V": 24, "H": 5, "B": 2, "T": 454, "h0": True} | L2,
        GDN | {"dtype": "fp16", "K": 48, "V": 32, "B": 3, "T": 15, "h0": True, "gates": "zero"},
        GDN | {"dtype": "fp16", "K": 64, "V": 32, "H": 5, "B": 2, "T": 1000, "gates": "uniform"},
        GDN | {"dtype": "fp16", "K": 48, "V": 16, "H": 5, "B": 2, "T": 359, "h0": True},
        GDN | {"dtype": "bf16", "K": 48, "V": 24, "H": 6, "B": 3, "T": 2, "gates": "strong"},
        GDN | {"dtype": "bf16", "K": 64, "V": 16, "B": 3, "T": 1, "gates": "strong"} | L2,
    ],
    ids=lambda spec: ",".join(f"{k}={v}" for k, v in spec.items()).replace(" ", ""),
)
def test_gated_delta_rule(spec: dict) -> None:
    torch.manual_seed(0)
    measures = GDN_CHUNK.check(spec, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_mom_with_small_heads() -> None:
    """Heads under 16 in fp32: the chunked op returned a slice of its padded output, which
    MoM's packed path could not view as [tokens, H·V]."""
    spec = {"dtype": "fp32", "d_model": 16, "num_heads": 2, "head_dim": 8, "expand_v": 1}
    spec |= {"num_memories": 2, "topk": 2, "shared_mem": True, "conv_size": 2, "empty_memory": False}
    torch.manual_seed(0)
    measures = MOM.check(spec | {"B": 1, "T": 17}, "cuda")
    assert all(m.ok for m in measures), report(measures)


@pytest.mark.parametrize(("seed", "B", "T"), [(0, 3, 65), (case_seed(20261207, "mom", 83), 2, 63)])
def test_mom_bf16_with_unit_heads(seed: int, B: int, T: int) -> None:
    """Layers case mom-19 of an earlier run (H100): fast against twin, d router.weight off by
    0.135 of its norm in bf16 with head_dim 1 and every memory chosen (topk = num_memories = 5).
    Then case mom-83 at seed 20261207, the same shape: fp64 judging both paths, fast's
    d memory_proj 0.36 off fp64 against the twin's 0.15. Ill-conditioned rather than wrong: the
    l2 norm of one channel is its sign, and rounding the inputs and weights alone to bf16 moves
    the fp64 d x by 0.76 of its norm. In bf16 such heads now judge the output and the routing
    (see tests/conformance/layers.py)."""
    spec = {"dtype": "bf16", "d_model": 256, "num_heads": 3, "head_dim": 1, "expand_v": 1}
    spec |= {"num_memories": 5, "topk": 5, "shared_mem": True, "conv_size": 2, "empty_memory": False}
    torch.manual_seed(seed)
    measures = MOM.check(spec | {"B": B, "T": T}, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_gated_delta_rule_bf16_with_one_value_channel() -> None:
    """Seed 20261207, case gdn_chunk-272 (H100): the fast path's dv 1.13e-2 off fp64 (bound
    1e-2) with V = 1 in bf16, gates near −20. A tail of rounding, not a wrong kernel: 60 draws
    of that shape gave a median of 0.21 of the bound; such cases get ONE_VALUE_CHANNEL_SLACK
    (see tests/conformance/ops.py)."""
    spec = GDN | {"dtype": "bf16", "K": 96, "V": 1, "B": 4, "T": 63, "h0": True, "gates": "strong"} | L2
    torch.manual_seed(case_seed(20261207, "gdn_chunk", 272))
    measures = GDN_CHUNK.check(spec, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_mom_fp32_twin_with_a_one_channel_head() -> None:
    """Seed 20261208, layers case mom-63 (H100): the fp32 twin's d q_conv.weight 4.9e-3 off
    fp64 with one head of one channel, then held to 1e-3. The l2 norm of one channel is a step
    of slope 1/sqrt(eps) at 0, so fp32 rounding inside the layer moves that gradient; such
    heads get TWIN_TOL_ONE_CHANNEL (see tests/conformance/layers.py)."""
    spec = {"dtype": "bf16", "d_model": 256, "num_heads": 1, "head_dim": 1, "expand_v": 2}
    spec |= {"num_memories": 3, "topk": 3, "shared_mem": True, "conv_size": 2, "empty_memory": False}
    torch.manual_seed(case_seed(20261208, "mom", 63))
    measures = MOM.check(spec | {"B": 1, "T": 17, "docs": [0, 14, 15, 17]}, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_l2norm_of_one_channel_in_fp32() -> None:
    """Seed 20261212, case l2norm-462 (H100): dx of a one-channel row, r·(dy − (y·dy)·y), cancels
    to eps·r/x², and the kernel and the fp32 twin both missed it by 1.2e-6 per element, over the
    floor of 1e-3 that assumed gradients of unit scale. dx is of scale r = 1/|x|: its floor is
    now FLOOR times the RMS of r (see tests/conformance/ops.py)."""
    torch.manual_seed(case_seed(20261212, "l2norm", 462))
    measures = FAMILIES["l2norm"].check({"dtype": "fp32", "D": 1, "shape": [1, 2]}, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_gated_rmsnorm_of_one_channel_in_fp32() -> None:
    """Seed 731947, case gated_rmsnorm-265 (H100): d o of a one-channel row, 1.3e-3 in size,
    cancels from terms of scale r·weight·silu(gate) ≈ 7, and the kernel missed it by 1.2e-6 per
    element (the twin alike), over the floor of 1e-3 that assumed unit scale. Its floor now
    scales with r·weight·silu(gate) (see tests/conformance/ops.py)."""
    torch.manual_seed(case_seed(731947, "gated_rmsnorm", 265))
    measures = FAMILIES["gated_rmsnorm"].check({"dtype": "fp32", "D": 1, "shape": [2, 1]}, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_gated_delta_rule_l2norm_of_one_channel_in_fp32() -> None:
    """Seed 731947, case gdn_chunk-429 (H100): K = 1 with the l2 norm in the kernel, whose d k
    cancels as the l2norm op's does; the fp32 twin missed it by 1.3e-3 of the unit floor. The
    floors of d q and d k now scale with 1/‖q‖ and 1/‖k‖."""
    spec = GDN | {"dtype": "fp32", "K": 1, "V": 8, "H": 5, "B": 1, "T": 2, "h0": True} | L2
    spec["docs"] = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    torch.manual_seed(case_seed(731947, "gdn_chunk", 429))
    measures = GDN_CHUNK.check(spec, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_gated_delta_rule_with_broadcast_output_gradients() -> None:
    """Found on the CPU under Triton's interpreter: the gradient of final_state.sum() arrives
    broadcast (stride 0), and the backward's state-gradient pass read it as dense [N, H, K, V]
    rows, past its single element. The op now makes it contiguous first."""
    from memlab.kernels.compare import rel_err
    from memlab.kernels.gated_delta_rule import chunk_gated_delta_rule, naive_recurrent_gated_delta_rule

    torch.manual_seed(0)
    B, T, H, K, V = 2, 129, 2, 64, 32
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1) for _ in "qk")
    inputs = {
        "q": q, "k": k, "v": torch.randn(B, T, H, V, device="cuda"),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda")),
        "beta": torch.rand(B, T, H, device="cuda"), "initial_state": torch.randn(B, H, K, V, device="cuda"),
    }  # fmt: skip

    def grads(fn, x, **kwargs):
        x = {n: t.detach().requires_grad_() for n, t in x.items()}
        o, S = fn(**x, output_final_state=True, **kwargs)
        return torch.autograd.grad(o.sum() + S.sum(), list(x.values()))

    want = grads(naive_recurrent_gated_delta_rule, {n: t.double() for n, t in inputs.items()})
    got = grads(chunk_gated_delta_rule, inputs, backend="triton")
    errors = {n: rel_err(a, b) for n, a, b in zip(inputs, got, want, strict=True)}
    assert all(err < 1e-3 for err in errors.values()), errors
