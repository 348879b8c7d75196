"""MoM's packed layout: the routed tokens laid end to end, segment after segment, for one
variable-length kernel launch over exactly the real visits. Taken on the Triton backend
without a decoding state (training, prefill from scratch, packed documents); the per-memory
projections are one grouped matmul over the segments (``torch._grouped_mm`` for bf16 on
Hopper, a dense matmul of every memory and a gather elsewhere), and the k/v convs restart at
every segment boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memlab.kernels import chunk_gated_delta_rule, combine_routed, l2norm
from memlab.models.layers.mom.dispatch import dispatch_rows, grouped_mm_fits, packed_layout, project_packed
from memlab.models.layers.mom.routing import Routing
from memlab.models.modules.autocast_input import autocast_input
from memlab.models.modules.short_conv import ShortConvolution
from memlab.models.modules.varlen import document_positions


class PackedLayout:
    """The MoM layer's segment operations on B sequences of T tokens, or on the documents of
    cu_seqlens (B == 1; its values are trusted: checking them would cost a host sync), with
    the N = B·T·S visits packed (see ``MoMAttention.forward``). No decoding state."""

    def __init__(self, routing: Routing, cu_seqlens: Tensor | None, state: None, backend: str | None) -> None:
        assert state is None, "the packed layout does not decode"
        self.cu_seqlens, self.backend = cu_seqlens, backend
        B, T, M = routing.visited.shape
        device = routing.visited.device
        if cu_seqlens is None:
            sequence = torch.arange(B * T, device=device) // T
            starts = torch.arange(B, device=device) * T
            ends = starts + T
        else:
            sequence, _ = document_positions(cu_seqlens, T)
            starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
        S = routing.chosen.shape[-1]
        self.segments = packed_layout(
            routing.visited.reshape(B * T, M), routing.chosen.reshape(B * T, S), sequence, starts, ends
        )
        self.tokens = B * T

    def time_conv(self, conv: ShortConvolution, u: Tensor) -> Tensor:
        """conv over each sequence (or document) in time order: u [B, T, C]."""
        y, _ = conv(u, cu_seqlens=self.cu_seqlens)
        return y

    def dispatch(self, x: Tensor, q: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Each visit's q [B, T, H, K] -> [N, H·K] (normalised later, with k: the normalised
        copies are then the ones the gated delta rule keeps for its backward, and no other copy
        of q is kept), and its token x [B, T, D] through its memory's projection weight
        [M, D, F] -> [N, F]."""
        B, T, H, K = q.shape
        q = dispatch_rows(q.reshape(B * T, H * K), self.segments, self.backend)
        flat = autocast_input(x.reshape(B * T, x.shape[-1]))
        grouped = grouped_mm_fits(flat, weight)
        return q, project_packed(flat, weight, self.segments, grouped, self.backend)

    def memory_conv(
        self, k_conv: ShortConvolution, v_conv: ShortConvolution, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The k and v convs over the packed segments, restarting at every (sequence, memory)
        boundary, so that they never read another memory's or sequence's tokens. k, v: [N, C]
        -> [1, N, C]."""
        k, _ = k_conv(k[None], cu_seqlens=self.segments.cu_seqlens)
        v, _ = v_conv(v[None], cu_seqlens=self.segments.cu_seqlens)
        return k, v

    def gated_delta_rule(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float
    ) -> Tensor:
        """One variable-length gated-delta-rule launch over the segments, q and k normalised
        here. q [N, H·K]; k [1, N, H·K]; v [1, N, H·V]; g, beta [N, H] -> o [1, N, H, V]."""
        N, H = g.shape
        o, _ = chunk_gated_delta_rule(
            l2norm(q.view(1, N, H, -1).to(k.dtype), backend=self.backend),
            l2norm(k.view(1, N, H, -1), backend=self.backend),
            v.view(1, N, H, -1),
            g.view(1, N, H),
            beta.view(1, N, H),
            scale=scale,
            cu_seqlens=self.segments.cu_seqlens,
            use_qk_l2norm_in_kernel=False,  # normalised already
            backend=self.backend,
        )
        return o

    def combine(self, o: Tensor, weights: Tensor) -> Tensor:
        """Σ over each token's S visits of weight · output: o [1, N, H, V] -> [B·T, H·V]."""
        N, S = self.segments.source.numel(), weights.shape[-1]
        return combine_routed(
            o.view(N, -1), self.segments.destination, weights.reshape(self.tokens, S), self.backend
        )
