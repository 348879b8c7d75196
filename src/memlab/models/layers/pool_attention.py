"""Attention from tokens to a pool of notes, with a null slot and a priority bias (MemMamba).

Tokens come grouped by chunk, and all tokens of a chunk read the same slots (the chunk's pool),
so the cost per token is the number of slots, a constant. Per head h, for a token t and slot j:

    logit_j = q_t · k_j / sqrt(d_h) + log π_j        (k_j, v_j from the slot's summary;
                                                      k_j optionally plus its group's offset)
    logit_∅ = q_t · k_∅ / sqrt(d_h)                  (the learned null slot: "nothing fits")
    out_t = o_proj(Σ_j softmax_j · v_j + softmax_∅ · v_∅)

Empty slots carry log π = −inf and get no weight. The bias log π lets the note scorer learn
from retrieval: a note that is read more is pushed up in priority.

The keys and values are linear in the summary s_j, so the attention runs in summary space:
q_h · W_k,h s_j = (W_k,hᵀ q_h) · s_j and Σ_j p_j W_v,h s_j = W_v,h Σ_j p_j s_j. Every chunk
has its own pool (K slots, or K per layer below for cross-layer attention), so projecting the
slots' summaries to keys and values would produce [B, C, K, H·d_h] tensors twice per pass;
folding W_k into the query projection and W_v into the output projection (small products of
weights, formed each call) leaves only the [B, C, K, summary_dim] summaries, shared by the heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# cuBLAS runs a 16-bit GEMM on its fast kernels only when its rows are a multiple of 8 elements
# (16 bytes) long; S + 1 and S + 1 + G in general are not (65 and 68 at S = 64, G = 3), and the
# unaligned kernels took about 3x as long for the query and output projections. So each head's
# block of rows (columns of the output weight) is padded with zeros up to a multiple, which
# also lets the logits' product read the queries in place; at S = 64 it makes the projected
# activations about 11 % larger. fp32 models pad too, at that small cost.
_GEMM_ROW_MULTIPLE = 8


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
        output_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, W, D] tokens by chunk; summary: [B, C, S_k, summary_dim], the slots each
        chunk's tokens read; log_priority: [B, C, S_k] at least fp32, −inf at empty slots;
        key_offset: [G, H·d_h] added to the keys of G equal consecutive groups of slots
        (MemMamba's layer embeddings, one group per layer read), or None; output_scale: [D]
        multiplying the output (MemMamba's fusion gain, folded into the output projection), or
        None.

        Returns out [B, C, W, D] (dtype of the projections' output) and the attention weights
        [B, C, W, H, S_k + 1] in fp32 (or fp64), the null slot last.
        """
        B, C, W, _ = x.shape
        S_k, S = summary.shape[2], summary.shape[3]
        H = self.num_heads
        G = 0 if key_offset is None else key_offset.shape[0]
        if G and S_k % G:
            raise ValueError(f"PoolAttention: {S_k} slots do not split into {G} equal groups")
        # Per head: the query in summary space, the null logit, the G offset logits, zeros.
        projected = F.linear(x, self._query_weight(key_offset)).unflatten(-1, (H, -1))
        query, null, offset = projected[..., :S], projected[..., S], projected[..., S + 1 : S + 1 + G]
        # bmm on 3-d views: a 4-d matmul costs several more (CPU-bound) ops, forward and backward
        slots = summary.reshape(B * C, S_k, S)
        logits = torch.bmm(query.reshape(B * C, W * H, S), slots.transpose(1, 2)).view(B, C, W, H, S_k)
        # Softmax in at least fp32: the bias and the masked slots need the range.
        work = torch.promote_types(log_priority.dtype, torch.float32)
        logits = logits + log_priority[:, :, None, None, :].to(work)  # promoted to `work`
        if G:
            logits = (logits.view(B, C, W, H, G, S_k // G) + offset.reshape(B, C, W, H, G, 1)).flatten(-2)
        probs = torch.cat([logits, null.reshape(B, C, W, H, 1).to(work)], dim=-1).softmax(dim=-1)
        p = probs.to(summary.dtype)
        mixed = torch.bmm(p[..., :-1].reshape(B * C, W * H, S_k), slots).view(B, C, W, H, S)
        gathered = _cat_padded([mixed, p[..., -1:].to(mixed.dtype)]).flatten(-2)
        return F.linear(gathered, self._output_weight(output_scale)), probs

    def _query_weight(self, key_offset: torch.Tensor | None) -> torch.Tensor:
        """[H·(S + 1 + G + pad), D], per head h the rows giving W_k,hᵀ q_h (the query in summary
        space), q_h · k_∅,h, q_h · key_offset[g, h] for each group g, then zero rows (see
        _GEMM_ROW_MULTIPLE); all scaled by 1/sqrt(d_h). One batched product over the heads."""
        H, Dh = self.num_heads, self.head_dim
        keys = [self.k_proj.weight.view(H, Dh, -1), self.null_key[..., None]]
        if key_offset is not None:
            keys.append(key_offset.view(-1, H, Dh).permute(1, 2, 0).to(keys[0].dtype))
        w_q = self.q_proj.weight.view(H, Dh, -1)
        return torch.bmm(_cat_padded(keys).transpose(1, 2), w_q).flatten(0, 1) / math.sqrt(Dh)

    def _output_weight(self, scale: torch.Tensor | None) -> torch.Tensor:
        """[D, H·(S + 1 + pad)], per head h the columns o_proj ∘ W_v,h (applied to Σ_j p_j s_j),
        o_proj ∘ v_∅,h (applied to the null slot's weight), then zero columns; rows times
        ``scale``. One batched product over the heads."""
        H, Dh = self.num_heads, self.head_dim
        values = _cat_padded([self.v_proj.weight.view(H, Dh, -1), self.null_value[..., None]])
        w_o = self.o_proj.weight.view(-1, H, Dh).transpose(0, 1)  # [H, D, d_h]
        weight = torch.bmm(w_o, values).transpose(0, 1).flatten(1)
        return weight if scale is None else scale[:, None] * weight


def _cat_padded(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Blocks [..., w_i] (one dtype, same leading dims) concatenated along the last dim, then
    zeros up to a multiple of _GEMM_ROW_MULTIPLE: a head's padded block of rows (weights) or of
    features (activations)."""
    pad = -sum(b.shape[-1] for b in blocks) % _GEMM_ROW_MULTIPLE
    if pad:
        lead = blocks[0].shape[:-1]
        blocks = [*blocks, blocks[0].new_zeros((1,) * len(lead) + (pad,)).expand(*lead, pad)]
    return torch.cat(blocks, dim=-1)
