"""Attention from tokens to a pool of notes, with a null slot and a priority bias (MemMamba).

Tokens come grouped by chunk, and all tokens of a chunk read the same slots (the chunk's pool),
so the cost per token is the number of slots, a constant. Per head h, for a token t and slot j:

    logit_j = q_t · k_j / sqrt(d_h) + log π_j        (k_j, v_j from the slot's summary;
                                                      k_j optionally plus a per-slot offset)
    logit_∅ = q_t · k_∅ / sqrt(d_h)                  (the learned null slot: "nothing fits")
    out_t = o_proj(Σ_j softmax_j · v_j + softmax_∅ · v_∅)

Empty slots carry log π = −inf and get no weight. The bias log π lets the note scorer learn
from retrieval: a note that is read more is pushed up in priority.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PoolAttention(nn.Module):
    """Multi-head attention from tokens [B, C, W, D] to per-chunk slots [B, C, S_k, summary_dim].

    Args:
        d_model: D, the width of the queries and of the output.
        summary_dim: width of a slot's summary.
        num_heads, head_dim: H heads of d_h channels.

    Parameters: q_proj [H·d_h, D], k_proj and v_proj [H·d_h, summary_dim], o_proj [D, H·d_h],
    null_key and null_value [H, d_h] (not weight-decayed).
    """

    def __init__(self, d_model: int, summary_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(summary_dim, inner, bias=False)
        self.v_proj = nn.Linear(summary_dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        self.null_key = nn.Parameter(torch.randn(num_heads, head_dim) * head_dim**-0.5)
        self.null_value = nn.Parameter(torch.zeros(num_heads, head_dim))
        for p in (self.null_key, self.null_value):
            p._no_weight_decay = True  # one slot, not a projection

    def forward(
        self,
        x: torch.Tensor,
        summary: torch.Tensor,
        log_priority: torch.Tensor,
        key_offset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, W, D] tokens by chunk; summary: [B, C, S_k, summary_dim], the slots each
        chunk's tokens read; log_priority: [B, C, S_k] at least fp32, −inf at empty slots;
        key_offset: [S_k, H·d_h] added to the slots' keys (MemMamba's layer embeddings), or None.

        Returns out [B, C, W, D] (dtype of the projections' output) and the attention weights
        [B, C, W, H, S_k + 1] in fp32 (or fp64), the null slot last.
        """
        B, C, W, _ = x.shape
        H, Dh = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, C, W, H, Dh)
        k = self.k_proj(summary)
        if key_offset is not None:
            k = k + key_offset.to(k.dtype)
        k = k.view(B, C, -1, H, Dh)
        v = self.v_proj(summary).view(B, C, -1, H, Dh)
        scale = 1.0 / math.sqrt(Dh)
        logits = torch.einsum("bcwhd,bckhd->bcwhk", q, k) * scale
        null = torch.einsum("bcwhd,hd->bcwh", q, self.null_key.to(q.dtype))[..., None] * scale
        bias = log_priority[:, :, None, None, :]
        # Softmax in at least fp32: the bias and the masked slots need the range.
        work = torch.promote_types(bias.dtype, torch.float32)
        logits = torch.cat([logits.to(work) + bias.to(work), null.to(work)], dim=-1)
        probs = logits.softmax(dim=-1)
        p = probs.to(v.dtype)
        mixed = torch.einsum("bcwhk,bckhd->bcwhd", p[..., :-1], v) + p[..., -1:] * self.null_value.to(v.dtype)
        return self.o_proj(mixed.reshape(B, C, W, H * Dh)), probs
