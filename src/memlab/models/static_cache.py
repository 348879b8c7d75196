"""A preallocated KV cache for attention decoding: every tensor keeps its shape from step to step
and the write position is a device tensor, so that a decode step over it has fixed shapes and no
host synchronisation (the precondition for capturing it in a CUDA graph). It computes exactly what
the growing ``KVCache`` of ``memlab.models.layers.attention`` computes: keys past the position are
masked out of the softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from memlab.models.modules.rotary import apply_rotary, rotary_angles

if TYPE_CHECKING:  # the attention layer imports this module
    from memlab.models.layers import Attention


@dataclass
class StaticKVCache:
    """k, v: [B, H, max_len, head_dim] in the model dtype, written in place; pos: int64 [] on the
    same device, the number of tokens read so far (the next token's position)."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor

    @classmethod
    def empty(
        cls, attn: Attention, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> StaticKVCache:
        shape = (batch_size, attn.num_heads, max_len, attn.head_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return cls(zeros, zeros.clone(), torch.zeros((), dtype=torch.long, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        """Empty the cache in place (its buffers stay where a captured graph expects them)."""
        self.pos.zero_()


def attend(attn: Attention, x: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
    """``attn`` over x [B, T, D] continuing from ``cache`` -> [B, T, D]; the cache's rows
    pos .. pos + T - 1 are written and pos advances by T. Writing past ``max_len`` is an index
    error (on CUDA, a device-side assert): no host check, which would synchronise."""
    B, T, _ = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    positions = cache.pos + torch.arange(T, device=x.device)
    cos, sin = rotary_angles(positions, attn.head_dim, attn.rope_theta)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    cache.k.index_copy_(2, positions, k)
    cache.v.index_copy_(2, positions, v)
    # query i (absolute position pos + i) sees the keys at positions <= pos + i
    visible = torch.arange(cache.max_len, device=x.device) <= positions[:, None]
    y = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=visible)
    cache.pos += T
    return attn.out(y.transpose(1, 2).reshape(B, T, -1))
