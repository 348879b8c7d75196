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

The null slot and the group offsets are two more kinds of key, and both enter as coordinates:
each head's query row in summary space is [q (S), null logit, G group offsets, zeros], and
every chunk's slots are extended to [s_j, 0, one-hot of the group, zeros] plus a last row
[0, 1, 0, ...] for the null slot. One product then gives every logit, the same extended slots
give the mixture [Σ_j p_j s_j, p_∅, ...] that the output projection reads, and the backward's
products give the null's and offsets' gradients: no concatenation of [rows, slots] tensors.

The whole attention, the weights' folding included, is one autograd Function with its backward
written out. Run as PyTorch's autograd records it, it took about 175 small ops per call, and
the cross-layer MemMamba layer (two attentions) took the host longer to launch than the GPU to
run (H100, d_model 768, 32K tokens: 15.9 ms of launches against 16.4 ms of GPU work); with the
Function and the extended slots, 11.8 ms of launches (the Mamba layer's own: 3.9 ms).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from memlab.models.modules.autocast_input import autocast_dtype

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

        Products run in the dtype nn.Linear would run them in (x's, or the autocast dtype
        under autocast), the softmax in at least fp32 and at least that dtype. Returns out
        [B, C, W, D] in the products' dtype and the attention weights [B, C, W, H, S_k + 1] in
        the softmax's, the null slot last (not differentiable: they are for statistics).
        """
        S_k = summary.shape[2]
        G = 0 if key_offset is None else key_offset.shape[0]
        if G and S_k % G:
            raise ValueError(f"PoolAttention: {S_k} slots do not split into {G} equal groups")
        out, weights = _PoolAttend.apply(
            x, summary, log_priority, key_offset, output_scale, self.q_proj.weight, self.k_proj.weight,
            self.null_key, self.v_proj.weight, self.o_proj.weight, self.null_value, autocast_dtype(x),
        )  # fmt: skip
        # Detached here, not marked non-differentiable inside: torch 2.11's AOT autograd fails
        # on a compiled Function output so marked ("element 1 of tensors does not require grad").
        return out, weights.detach()

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        summary: torch.Tensor,
        log_priority: torch.Tensor,
        key_offset: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` for one token per row: x [B, D], summary [B, S_k, summary_dim],
        log_priority [B, S_k], key_offset and output_scale as there -> out [B, D] in the
        products' dtype.

        The same algebra, applied to the token instead of the weights: per head the query is
        taken into summary space, W_k,hᵀ q_h (the null key and the group offsets as further
        columns), and the mixture Σ_j p_j s_j back out through W_v,h, so no product of
        weights is formed per call.
        """
        B, S_k, S = summary.shape
        H, Dh = self.num_heads, self.head_dim
        G = 0 if key_offset is None else key_offset.shape[0]
        compute = autocast_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            work = torch.promote_types(torch.promote_types(log_priority.dtype, compute), torch.float32)
            keys = [self.k_proj.weight.view(H, Dh, S), self.null_key[..., None]]
            if G:
                keys.append(key_offset.view(G, H, Dh).permute(1, 2, 0))
            keys = torch.cat(keys, 2).to(compute)  # [H, d_h, S + 1 + G]
            q = F.linear(x.to(compute), self.q_proj.weight.to(compute)) * Dh**-0.5
            q_keys = torch.bmm(q.view(B, H, Dh).transpose(0, 1), keys)  # [H, B, S + 1 + G]
            slots = summary.to(compute)
            logits = torch.bmm(q_keys[..., :S].transpose(0, 1), slots.transpose(1, 2))  # [B, H, S_k]
            logits = logits + log_priority[:, None].to(work)
            if G:  # each group of S_k / G slots gets its offset's logit
                logits = (
                    logits.view(B, H, G, -1) + q_keys[..., S + 1 :].permute(1, 0, 2)[..., None]
                ).flatten(2)
            p = torch.cat([logits, q_keys[..., S].t()[..., None]], -1).softmax(-1).to(compute)  # null last
            mixed = torch.bmm(p[..., :S_k], slots).transpose(0, 1)  # [H, B, S]
            w_v = self.v_proj.weight.to(compute).view(H, Dh, S).transpose(1, 2)
            values = torch.baddbmm(
                p[..., S_k].t()[..., None] * self.null_value.to(compute)[:, None], mixed, w_v
            )  # [H, B, d_h]
            out = F.linear(values.transpose(0, 1).reshape(B, H * Dh), self.o_proj.weight.to(compute))
            return out if output_scale is None else out * output_scale.to(compute)


class _PoolAttend(torch.autograd.Function):
    """PoolAttention's computation with its backward written out (see the module docstring)."""

    @staticmethod
    def forward(
        ctx, x, summary, log_priority, key_offset, scale, w_q, w_k, null_key, w_v, w_o, null_value, compute
    ):
        """PoolAttention.forward's inputs and parameters (w_q [H·d_h, D], w_k and w_v
        [H·d_h, S], null_key and null_value [H, d_h], w_o [D, H·d_h]), products in ``compute``:
        out [B, C, W, D] in ``compute``, weights [B, C, W, H, S_k + 1] in the softmax's dtype."""
        with torch.autocast(x.device.type, enabled=False):
            B, C, W, D = x.shape
            S_k, S = summary.shape[2], summary.shape[3]
            H = null_key.shape[0]
            G = 0 if key_offset is None else key_offset.shape[0]
            E = S + 1 + G + _head_pad(S + 1 + G)
            work = torch.promote_types(torch.promote_types(log_priority.dtype, compute), torch.float32)
            q_fold, keys = _fold_query(w_q, w_k, null_key, key_offset, E)  # [H·E, D], [H, d_h, E]
            o_fold, values = _fold_output(w_o, w_v, null_value, E)  # [D, H·E], [H, d_h, E]
            o_weight = o_fold if scale is None else scale[:, None] * o_fold
            x2 = x.reshape(B * C * W, D).to(compute)
            q_w, o_w = q_fold.to(compute), o_weight.to(compute)
            slots = _extended_slots(summary.reshape(B * C, S_k, S).to(compute), G, E)
            # Per (chunk, token·head) row: the query in summary space, the null logit, the G
            # group offsets, zeros; against the extended slots, one product gives every logit.
            projected = (x2 @ q_w.t()).view(B * C, W * H, E)
            # The null's bias is 0. The bias is in `work`, so adding it to the bf16 logits casts
            # them in the same kernel.
            bias = F.pad(log_priority.reshape(B * C, 1, S_k).to(work), (0, 1))
            probs = (torch.bmm(projected, slots.transpose(1, 2)) + bias).softmax(dim=-1)
            p = probs.to(compute)
            # Per row: Σ_j p_j s_j, p_∅, the groups' sums of p (met by zero output columns), zeros.
            gathered = torch.bmm(p, slots).view(B * C * W, H * E)
            out = (gathered @ o_w.t()).view(B, C, W, D)
        ctx.save_for_backward(
            x2, slots, projected, probs, gathered, q_w, o_w, o_fold, keys, values, w_q, w_o, scale
        )
        ctx.shape = (B, C, W, D, S_k, S, H, G)
        ctx.dtypes = (x.dtype, summary.dtype, log_priority.dtype)
        return out, probs.view(B, C, W, H, S_k + 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, _):
        # Its products in the forward's dtypes, whatever autocast the backward is called under.
        with torch.autocast(d_out.device.type, enabled=False):
            x2, slots, projected, probs, gathered, q_w, o_w, o_fold, keys, values, w_q, w_o, scale = (
                ctx.saved_tensors
            )
            B, C, W, D, S_k, S, H, G = ctx.shape
            E = slots.shape[2]
            compute, work = x2.dtype, probs.dtype
            d_out = d_out.reshape(B * C * W, D).to(compute)
            # Output projection and the attention's mixture.
            d_gathered = (d_out @ o_w).view(B * C, W * H, E)
            d_o_weight = (d_out.t() @ gathered).to(o_fold.dtype)
            p = probs.to(compute)  # cast again: saving it would add half of probs' memory
            dp = torch.bmm(d_gathered, slots.transpose(1, 2)).to(work)
            # Softmax (p ⊙ (dp − Σ p ⊙ dp) in one kernel, where the expression takes four), then
            # the logits' terms.
            d_logits = torch._softmax_backward_data(dp, probs, -1, work)
            d_log_priority = d_logits[..., :S_k].sum(1).view(B, C, S_k)
            d_logits = d_logits.to(compute)
            d_projected = torch.bmm(d_logits, slots).view(B * C * W, H * E)
            d_slots = torch.baddbmm(
                torch.bmm(p.transpose(1, 2), d_gathered), d_logits.transpose(1, 2), projected
            )
            d_x = (d_projected @ q_w).view(B, C, W, D)
            d_q_fold = (d_projected.t() @ x2).to(w_q.dtype)
            # Through the folds to the parameters.
            d_w_q, d_w_k, d_null_key, d_key_offset = _fold_query_backward(d_q_fold, w_q, keys, S, G)
            d_scale = None
            if scale is not None:
                d_scale = (d_o_weight * o_fold).sum(1)
                d_o_weight = d_o_weight * scale[:, None]
            d_w_o, d_w_v, d_null_value = _fold_output_backward(d_o_weight, w_o, values, S)
            x_dtype, summary_dtype, priority_dtype = ctx.dtypes
            d_summary = d_slots[:, :S_k, :S].reshape(B, C, S_k, S).to(summary_dtype)
            return (
                d_x.to(x_dtype), d_summary, d_log_priority.to(priority_dtype),
                d_key_offset, d_scale, d_w_q, d_w_k, d_null_key, d_w_v, d_w_o, d_null_value, None,
            )  # fmt: skip


def _extended_slots(slots: torch.Tensor, G: int, E: int) -> torch.Tensor:
    """Slots [n, S_k, S] extended to [n, S_k + 1, E] so that one product with a query row
    [q (S), null logit, G group offsets, zeros] gives every logit: slot j's row is
    [s_j, 0, one-hot of its group (S_k / G equal consecutive groups), zeros], the null slot's
    last row [0, 1, 0, ...]."""
    S_k, S = slots.shape[1:]
    marks = slots.new_zeros(S_k + 1, E)
    marks[S_k, S].fill_(1)  # fill_, not item assignment, which copies a host scalar (a sync)
    if G:
        groups = torch.eye(G, dtype=slots.dtype, device=slots.device).repeat_interleave(S_k // G, dim=0)
        marks[:S_k, S + 1 : S + 1 + G].copy_(groups)
    return F.pad(slots, (0, E - S, 0, 1)) + marks


def _fold_query(w_q, w_k, null_key, key_offset, E):
    """The query projection in summary space, [H·E, D]: per head h the rows W_k,hᵀ W_q,h
    (S rows), k_∅,hᵀ W_q,h, key_offset[g, h]ᵀ W_q,h for each group g, then zero rows up to E;
    all over sqrt(d_h). Also returns the per-head key-side matrix [H, d_h, E] it multiplied
    (for the backward)."""
    H, Dh = null_key.shape
    keys = [w_k.view(H, Dh, -1), null_key[..., None]]
    if key_offset is not None:
        keys.append(key_offset.view(-1, H, Dh).permute(1, 2, 0).to(w_k.dtype))
    keys = F.pad(torch.cat(keys, dim=2), (0, E - sum(k.shape[-1] for k in keys))) / math.sqrt(Dh)
    return torch.bmm(keys.transpose(1, 2), w_q.view(H, Dh, -1)).flatten(0, 1), keys


def _fold_query_backward(d_fold, w_q, keys, S, G):
    """Gradients of _fold_query's w_q [H·d_h, D], w_k [H·d_h, S], null_key [H, d_h] and
    key_offset [G, H·d_h] (None without groups) from d_fold [H·E, D], in the weights' dtype."""
    H, Dh, E = keys.shape
    d_fold = d_fold.view(H, E, -1)
    d_w_q = torch.bmm(keys, d_fold).view(H * Dh, -1)
    d_keys = torch.bmm(w_q.view(H, Dh, -1), d_fold.transpose(1, 2)) / math.sqrt(Dh)  # [H, d_h, E]
    d_key_offset = d_keys[..., S + 1 : S + 1 + G].permute(2, 0, 1).reshape(G, H * Dh) if G else None
    return d_w_q, d_keys[..., :S].reshape(H * Dh, S), d_keys[..., S], d_key_offset


def _fold_output(w_o, w_v, null_value, E):
    """The output projection applied to per-head [Σ_j p_j s_j, p_∅, anything], [D, H·E]: per
    head the columns o_proj ∘ W_v,h, o_proj ∘ v_∅,h, then zero columns up to E. Also returns
    the per-head value-side matrix [H, d_h, E]."""
    H, Dh = null_value.shape
    values = F.pad(torch.cat([w_v.view(H, Dh, -1), null_value[..., None]], dim=2), (0, E - w_v.shape[1] - 1))
    w_o3 = w_o.view(-1, H, Dh).transpose(0, 1)  # [H, D, d_h]
    return torch.bmm(w_o3, values).transpose(0, 1).flatten(1), values


def _fold_output_backward(d_fold, w_o, values, S):
    """Gradients of _fold_output's w_o [D, H·d_h], w_v [H·d_h, S] and null_value [H, d_h] from
    d_fold [D, H·E], in the weights' dtype."""
    H, Dh, E = values.shape
    d_fold = d_fold.view(-1, H, E).transpose(0, 1)  # [H, D, E]
    d_w_o = torch.bmm(d_fold, values.transpose(1, 2)).transpose(0, 1).reshape(-1, H * Dh)
    d_values = torch.bmm(w_o.view(-1, H, Dh).permute(1, 2, 0), d_fold)  # [H, d_h, E]
    return d_w_o, d_values[..., :S].reshape(H * Dh, S), d_values[..., S]


def _head_pad(width: int) -> int:
    """Zeros that pad a head's block of ``width`` rows (or columns) to a multiple of
    _GEMM_ROW_MULTIPLE."""
    return -width % _GEMM_ROW_MULTIPLE
