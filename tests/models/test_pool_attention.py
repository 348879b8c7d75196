"""PoolAttention, which runs in summary space (W_k folded into the queries, W_v into the output),
against the attention written with per-head keys and values (fp64, outputs, weights and
gradients), with empty slots, a chunk whose pool is empty, groups of slots with key offsets and
a scale on the output."""

from __future__ import annotations

import math

import pytest
import torch

from memlab.models.layers.pool_attention import PoolAttention

F64 = torch.float64


def head_space(att: PoolAttention, x, summary, log_priority, key_offset, groups: int):
    """The attention as specified: keys k_j = W_k s_j (+ offset of j's group) and values
    v_j = W_v s_j per head, plus the null slot -> out [B, C, W, D], weights [B, C, W, H, S_k + 1]."""
    B, C, W, _ = x.shape
    H, Dh = att.num_heads, att.head_dim
    q = att.q_proj(x).view(B, C, W, H, Dh)
    k = att.k_proj(summary)
    if key_offset is not None:
        k = k + key_offset.repeat_interleave(summary.shape[2] // groups, dim=0)
    k = k.view(B, C, -1, H, Dh)
    v = att.v_proj(summary).view(B, C, -1, H, Dh)
    logits = torch.einsum("bcwhd,bckhd->bcwhk", q, k) / math.sqrt(Dh) + log_priority[:, :, None, None, :]
    null = torch.einsum("bcwhd,hd->bcwh", q, att.null_key)[..., None] / math.sqrt(Dh)
    probs = torch.cat([logits, null], dim=-1).softmax(-1)
    mixed = torch.einsum("bcwhk,bckhd->bcwhd", probs[..., :-1], v) + probs[..., -1:] * att.null_value
    return att.o_proj(mixed.reshape(B, C, W, H * Dh)), probs


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
    ref_out, ref_probs = head_space(att, x, summary, log_priority, key_offset, groups)
    if scale is not None:
        ref_out = scale * ref_out
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-12, atol=1e-12)
    assert torch.equal(probs[1, 0, ..., :-1], torch.zeros_like(probs[1, 0, ..., :-1]))

    leaves = [x, summary, log_priority, *att.parameters()]
    leaves += [t for t in (key_offset, scale) if t is not None]
    dout, dprobs = torch.randn_like(out), torch.randn_like(probs)
    grads = torch.autograd.grad((out * dout).sum() + (probs * dprobs).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * dout).sum() + (ref_probs * dprobs).sum(), leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_slots_that_do_not_split_into_the_offset_groups_are_refused() -> None:
    att = PoolAttention(8, 4, 2, 4).double()
    x, summary = torch.randn(1, 2, 3, 8, dtype=F64), torch.randn(1, 2, 5, 4, dtype=F64)
    with pytest.raises(ValueError, match="5 slots do not split into 2 equal groups"):
        att(x, summary, torch.zeros(1, 2, 5, dtype=F64), torch.zeros(2, 8, dtype=F64))
