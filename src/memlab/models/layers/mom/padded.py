"""MoM's padded layout: segment (b, m) is row b·M + m of a [B·M, T] batch, its tokens
compacted to the front and the rest padding with decay g = 0 and β = 0, which leaves the
state untouched. Any kernel backend runs it, and it is the only layout that decodes (a
state continued from a cache); it pays for M·T token slots per sequence instead of (k + shared)·T.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memlab.kernels import chunk_gated_delta_rule, combine_routed, fused_recurrent_gated_delta_rule
from memlab.models.layers.mom.dispatch import padded_layout
from memlab.models.layers.mom.routing import Routing
from memlab.models.layers.mom.state import MoMState
from memlab.models.modules.short_conv import ShortConvolution


class PaddedLayout:
    """The MoM layer's segment operations on B sequences of T tokens in padded rows
    (see ``MoMAttention.forward``); ``state``, if given, is continued and updated in place."""

    def __init__(
        self, routing: Routing, cu_seqlens: Tensor | None, state: MoMState | None, backend: str | None
    ) -> None:
        assert cu_seqlens is None, "packed documents reach the padded layout as rows (DocumentRows)"
        self.state, self.backend = state, backend
        self.B, self.T, self.M = routing.visited.shape
        # Gated DeltaNet: every token visits the one memory, the rows are the sequences, and
        # dispatch, combine and the padding mask would be identity work (the layout's cumsum
        # along time alone took 0.12 ms per layer at 4 × 2048 on an H100)
        self.single = self.M == 1
        if not self.single:  # destination [B, T, S], counts [B, M]
            self.destination, self.counts = padded_layout(routing.visited, routing.chosen)

    def time_conv(self, conv: ShortConvolution, u: Tensor) -> Tensor:
        """conv over each sequence in time order, continuing the state's q tail: u [B, T, C]."""
        y, tail = conv(u, cache=None if self.state is None else self.state.q_tail)
        if self.state is not None:
            self.state.q_tail = tail
        return y

    def dispatch(self, x: Tensor, q: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Each visit's q [B, T, H, K] -> [B, M, T, H·K], and its token x [B, T, D] through its
        memory's projection weight [M, D, F] -> [B, M, T, F]."""
        B, T, M, D = self.B, self.T, self.M, x.shape[-1]
        if self.single:  # one memory every token visits: the rows are the sequences
            return q.flatten(2)[:, None], torch.einsum("btd,df->btf", x, weight[0])[:, None]
        features = torch.cat([x, q.flatten(2)], dim=-1)  # dispatched together: one scatter
        S, width = self.destination.shape[2], features.shape[-1]
        rows = features.new_zeros(B * M * T, width).index_copy(
            0, self.destination.flatten(), features[:, :, None].expand(B, T, S, width).reshape(-1, width)
        )
        x_rows, q_rows = rows.view(B, M, T, width).split([D, width - D], dim=-1)
        return q_rows, torch.einsum("bmtd,mdf->bmtf", x_rows, weight)

    def memory_conv(
        self, k_conv: ShortConvolution, v_conv: ShortConvolution, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The k and v convs per row, over one memory's routed subsequence: they restart at every
        (sequence, memory) boundary and never read another memory's tokens. k, v: [B, M, T, C]
        -> [B·M, T, C]."""
        B, M, T, state = self.B, self.M, self.T, self.state
        lengths = None if self.single else self.counts.flatten()  # None: every row is whole
        k_tail = v_tail = None
        if state is not None:
            k_tail, v_tail = state.k_tail.flatten(0, 1), state.v_tail.flatten(0, 1)
        k, k_tail = k_conv(k.reshape(B * M, T, -1), k_tail, lengths)
        v, v_tail = v_conv(v.reshape(B * M, T, -1), v_tail, lengths)
        if state is not None:
            state.k_tail, state.v_tail = k_tail.unflatten(0, (B, M)), v_tail.unflatten(0, (B, M))
        return k, v

    def gated_delta_rule(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float
    ) -> Tensor:
        """One gated-delta-rule call over the B·M rows (q and k normalised in the kernel), from
        and into the state's memories. q [B, M, T, H·K]; k [B·M, T, H·K]; v [B·M, T, H·V];
        g, beta [B, M, T, H] -> o [B·M, T, H, V]."""
        B, M, T, H, state = self.B, self.M, self.T, g.shape[-1], self.state
        if not self.single:  # padding must not decay or write
            real = (torch.arange(T, device=g.device) < self.counts[..., None])[..., None]  # [B, M, T, 1]
            g, beta = g * real, beta * real
        # T == 1 with a cache is a decoding step; everything else, training at any T included,
        # takes the chunked form.
        kernel = fused_recurrent_gated_delta_rule if state is not None and T == 1 else chunk_gated_delta_rule
        o, final = kernel(
            # under autocast k, v come out of the einsum in the autocast dtype while q does not
            q.reshape(B * M, T, H, -1).to(k.dtype),
            k.view(B * M, T, H, -1),
            v.view(B * M, T, H, -1),
            g.reshape(B * M, T, H),
            beta.reshape(B * M, T, H),
            scale=scale,
            initial_state=None if state is None else state.memory.flatten(0, 1),
            output_final_state=state is not None,
            use_qk_l2norm_in_kernel=True,
            backend=self.backend,
        )
        if state is not None:
            state.memory = final.view(B, M, *final.shape[1:])
        return o

    def combine(self, o: Tensor, weights: Tensor) -> Tensor:
        """Σ over each token's S visits of weight · output: o [B·M, T, H, V] -> [B·T, H·V]."""
        B, T, M = self.B, self.T, self.M
        if self.single:  # each token's one visit, at weight 1
            return o.reshape(B * T, -1)
        S = self.destination.shape[2]
        return combine_routed(
            o.reshape(B * M * T, -1), self.destination.view(B * T, S), weights.reshape(B * T, S), self.backend
        )
