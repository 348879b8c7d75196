"""The pool attention of MemMamba as specified, one token at a time: the reference the
PoolAttention and MemMamba tests compare against."""

from __future__ import annotations

import torch

from memlab.models.layers.memmamba.pool_attention import PoolAttention


def read(
    att: PoolAttention, u: torch.Tensor, slots: list, key_offsets: list | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token u [D] attending to slots [(summary, log π)] and the null slot, with per-head
    keys k = W_k s and values v = W_v s, the i-th slot's key plus key_offsets[i] if given ->
    the output [D] and the attention weights [H, 1 + slots], the null slot first."""
    H, Dh = att.num_heads, att.head_dim
    q = att.q_proj(u).view(H, Dh)
    logits = [(q * att.null_key).sum(-1) / Dh**0.5]
    values = [att.null_value]
    for i, (s, lp) in enumerate(slots):
        k = att.k_proj(s) + (0.0 if key_offsets is None else key_offsets[i])
        logits.append((q * k.view(H, Dh)).sum(-1) / Dh**0.5 + lp)
        values.append(att.v_proj(s).view(H, Dh))
    p = torch.stack(logits, -1).softmax(-1)  # [H, 1 + slots]
    return att.o_proj((p[:, :, None] * torch.stack(values, 1)).sum(1).reshape(-1)), p
