"""Causal multi-head softmax attention with RoPE over PyTorch SDPA: the Transformer baseline's mixer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.models.mixer import MixerOutput
from memlab.models.modules.rotary import apply_rotary, rotary_angles
from memlab.models.modules.varlen import DocumentRows, check_packed, document_rows
from memlab.models.schema import Schema, option
from memlab.models.static_cache import StaticKVCache, attend


@dataclass
class KVCache:
    """Decoding cache of one attention layer; grows with the context (the baseline's cost).

    k, v: [B, H, T_seen, head_dim] in the model dtype.
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]


@dataclass(frozen=True)
class AttentionConfig(Schema):
    """The options of an attention layer: heads of ``head_dim`` channels (None: d_model split
    evenly over ``num_heads``), RoPE with base ``rope_theta``."""

    d_model: int = option(128, ge=1)
    num_heads: int = option(4, ge=1)
    head_dim: int | None = option(None, ge=2)
    rope_theta: float = option(10000.0, gt=0)

    def check(self) -> None:
        if self.head_dim is None:
            self.require(
                "num_heads", self.d_model % self.num_heads == 0, f"a divisor of d_model={self.d_model}"
            )
        else:
            self.require("head_dim", self.head_dim % 2 == 0, "even for RoPE")

    @property
    def head_size(self) -> int:
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim


class Attention(nn.Module):
    """Softmax attention mixer. x: [B, T, D] -> [B, T, D]; heads: ``num_heads`` × ``head_dim``."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        num_heads: int = 4,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.config = AttentionConfig(d_model, num_heads, head_dim, rope_theta)
        head_dim = self.config.head_size
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim, self.rope_theta = num_heads, head_dim, rope_theta
        self.qkv = nn.Linear(d_model, 3 * num_heads * head_dim, bias=False)
        self.out = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_len: int | None = None
    ) -> KVCache | StaticKVCache:
        """An empty cache that grows with the context, or with ``max_len`` a preallocated
        ``StaticKVCache`` of that many positions (fixed shapes, for CUDA-graph decoding)."""
        if max_len is not None:
            return StaticKVCache.empty(self, batch_size, max_len, device, dtype)
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty.clone())

    def state_size(self, context_length: int) -> int:
        """Elements per sequence of the KV cache after ``context_length`` tokens: 2 · H · head_dim · T."""
        return 2 * self.num_heads * self.head_dim * context_length

    def forward(
        self,
        x: torch.Tensor,
        state: KVCache | StaticKVCache | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> MixerOutput:
        if isinstance(state, StaticKVCache):
            return MixerOutput(attend(self, x, state))
        check_packed("Attention", x.shape[0], cu_seqlens, state)
        if cu_seqlens is not None:
            return MixerOutput(self._attend_documents(x, document_rows("Attention", cu_seqlens, x)))
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = state.length if state is not None else 0
        positions = torch.arange(offset, offset + T, device=x.device)
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_theta)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is not None:
            k = torch.cat([state.k, k], dim=2)
            v = torch.cat([state.v, v], dim=2)
            state.k, state.v = k, v
        if offset == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Query i (absolute position offset + i) sees keys up to offset + i.
            visible = torch.ones(T, offset + T, dtype=torch.bool, device=x.device).tril(diagonal=offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return MixerOutput(self.out(y.transpose(1, 2).reshape(B, T, -1)))

    def _attend_documents(self, x: torch.Tensor, rows: DocumentRows) -> torch.Tensor:
        """Packed documents x [1, T, D] attended as a batch of rows, each padded at its end:
        causal attention within a row never reaches the padding, and the work grows with the
        number of documents times the longest one's square rather than with T², with no mask."""
        H, hd = self.num_heads, self.head_dim
        q, k, v = rows.pad(self.qkv(x)).unflatten(-1, (3, H, hd)).permute(2, 0, 3, 1, 4)  # [N, H, L, hd]
        cos, sin = rotary_angles(torch.arange(rows.shape[1], device=x.device), hd, self.rope_theta)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(rows.unpad(y.transpose(1, 2).flatten(2)))
