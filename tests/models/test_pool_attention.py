"""PoolAttention, which runs in summary space (W_k folded into the queries, W_v into the output),
against the token-by-token attention with per-head keys and values (fp64, outputs, weights and
gradients), with empty slots, a chunk whose pool is empty, groups of slots with key offsets and
a scale on the output; and under bf16 autocast, loosely against fp64."""

from __future__ import annotations

import pytest
import torch

from memlab.models.layers.memmamba.pool_attention import PoolAttention
from tests.models.pool_reference import read

F64 = torch.float64


def token_by_token(att: PoolAttention, x, summary, log_priority, key_offset):
    """``read`` for every token -> out [B, C, W, D] and weights [B, C, W, H, S_k + 1] (null last);
    key_offset [G, H·d_h] tags G equal consecutive groups of slots."""
    B, C, W, _ = x.shape
    S_k = summary.shape[2]
    tags = None if key_offset is None else key_offset.repeat_interleave(S_k // len(key_offset), dim=0)
    outs, weights = [], []
    for b in range(B):
        for c in range(C):
            slots = list(zip(summary[b, c], log_priority[b, c], strict=True))
            for w in range(W):
                out, p = read(att, x[b, c, w], slots, tags)
                outs.append(out)
                weights.append(torch.cat([p[:, 1:], p[:, :1]], dim=-1))
    return torch.stack(outs).view(B, C, W, -1), torch.stack(weights).view(B, C, W, att.num_heads, S_k + 1)


@pytest.mark.parametrize("groups", [0, 1, 3])
def test_summary_space_equals_head_space_outputs_weights_and_gradients(groups: int) -> None:
    torch.manual_seed(groups)
    B, C, W, D, S, H, Dh = 2, 3, 5, 11, 7, 3, 4
    slots = 2 * max(groups, 1)
    att = PoolAttention(D, S, H, Dh).double()
    with torch.no_grad():
        att.null_value.normal_()
    x = torch.randn(B, C, W, D, dtype=F64, requires_grad=True)
    summary = torch.randn(B, C, slots, S, dtype=F64, requires_grad=True)
    log_priority = torch.randn(B, C, slots, dtype=F64)
    log_priority[0, 1, 1] = float("-inf")  # an empty slot
    log_priority[1, 0] = float("-inf")  # a chunk with an empty pool: only the null slot
    log_priority.requires_grad_()
    key_offset = torch.randn(groups, H * Dh, dtype=F64, requires_grad=True) if groups else None
    scale = torch.randn(D, dtype=F64, requires_grad=True) if groups != 1 else None

    out, probs = att(x, summary, log_priority, key_offset, scale)
    ref_out, ref_probs = token_by_token(att, x, summary, log_priority, key_offset)
    if scale is not None:
        ref_out = scale * ref_out
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-12, atol=1e-12)
    assert torch.equal(probs[1, 0, ..., :-1], torch.zeros_like(probs[1, 0, ..., :-1]))

    leaves = [x, summary, log_priority, *att.parameters()]
    leaves += [t for t in (key_offset, scale) if t is not None]
    assert not probs.requires_grad  # statistics only
    dout = torch.randn_like(out)
    grads = torch.autograd.grad((out * dout).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * dout).sum(), leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_slots_that_do_not_split_into_the_offset_groups_are_refused() -> None:
    att = PoolAttention(8, 4, 2, 4).double()
    x, summary = torch.randn(1, 2, 3, 8, dtype=F64), torch.randn(1, 2, 5, 4, dtype=F64)
    with pytest.raises(ValueError, match="5 slots do not split into 2 equal groups"):
        att(x, summary, torch.zeros(1, 2, 5, dtype=F64), torch.zeros(2, 8, dtype=F64))


def test_bf16_autocast_runs_in_bf16_and_matches_fp64() -> None:
    # Under autocast the products run in bf16, the softmax in fp32, and the gradients come back
    # in the leaves' own dtypes.
    torch.manual_seed(0)
    B, C, W, D, S, H, Dh, groups = 2, 3, 8, 32, 16, 2, 16, 2
    att = PoolAttention(D, S, H, Dh)
    with torch.no_grad():
        att.null_value.normal_()
    x = torch.randn(B, C, W, D)
    summary, log_priority = torch.randn(B, C, 4, S), torch.randn(B, C, 4).clamp_max(0)
    key_offset, scale = torch.randn(groups, H * Dh), torch.randn(D)
    inputs = [x, summary, log_priority, key_offset, scale]
    dout = torch.randn(B, C, W, D)

    def grads(module, tensors, autocast):
        leaves = [t.detach().requires_grad_() for t in tensors]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, probs = module(*leaves)
        got = torch.autograd.grad((out.to(dout.dtype) * dout).sum(), leaves + list(module.parameters()))
        return out, probs, got

    out, probs, got = grads(att, inputs, autocast=True)
    assert out.dtype == torch.bfloat16 and probs.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in got)
    ref_out, _, want = grads(att.double(), [t.double() for t in inputs], autocast=False)
    for a, b in zip([out, *got], [ref_out, *want], strict=True):
        assert ((a.double() - b).norm() / b.norm()).item() < 3e-2


def test_fp64_runs_in_fp64_under_autocast_and_with_fp32_priorities() -> None:
    # As nn.Linear would: autocast leaves fp64 alone; the softmax takes x's precision when the
    # priorities carry less.
    att = PoolAttention(8, 4, 2, 4).double()
    x, summary = torch.randn(1, 2, 3, 8, dtype=F64), torch.randn(1, 2, 2, 4, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, probs = att(x, summary, torch.zeros(1, 2, 2))
    assert out.dtype == F64 and probs.dtype == F64


def test_second_derivatives_are_refused() -> None:
    # The backward is written out and not itself differentiable: a second derivative must fail
    # loudly, not come out wrong.
    att = PoolAttention(8, 4, 2, 4).double()
    x = torch.randn(1, 2, 3, 8, dtype=F64, requires_grad=True)
    out, _ = att(x, torch.randn(1, 2, 2, 4, dtype=F64), torch.zeros(1, 2, 2, dtype=F64))
    (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    # (without @once_differentiable it returned a value, missing the terms through the weights)
    with pytest.raises(RuntimeError, match=r"once_differentiable|not have been used in the graph"):
        torch.autograd.grad(dx.sum(), x)
