"""MemMamba (arXiv 2510.03279): a Mamba-1 layer that takes notes.

With u the mixer input (already RMS-normed by the block), per layer l:
    notes:   per chunk c of w tokens, m_c = maxpool_w(u_c); summary s_c = RMSNorm(W_s m_c) and
             priority π_c = sigmoid(w_π · m_c + b_π) (or a fixed positional schedule)
    pool:    the tokens of chunk c read the K highest-priority notes of chunks < c, and with
             R recent_slots also the notes of chunks c−R..c−1 (a FIFO; the K best then come
             from chunks < c−R) (``NotePool``: causal, parallel, equal to sequential
             insert/evict)
    c_tok:   cross-token attention from u_t to that pool (``PoolAttention``: null slot,
             logits biased by log π)
    c_lay:   at layers with (l + 1) mod p == 0, the same attention with its own weights over
             the pools of the g layers before l, each slot's key plus a learned embedding of
             its layer distance (p = 0: never)
    fusion:  ū = u + γ_tok ⊙ σ(W_gate u) ⊙ c_tok + γ_lay ⊙ c_lay   ("gated", the default)
             ū = u + γ_tok ⊙ c_tok + γ_lay ⊙ c_lay                 ("weighted")
             ū = u + c_tok + c_lay                                 ("residual", Eq. 12)
    output:  Mamba(ū), the unchanged Mamba-1 computation (``self.backbone``)

γ are per-channel and start at 0, so an untrained MemMamba computes exactly its backbone.
"The last g layers" of the paper are read as the g layers *below* l (l − g … l − 1, fewer near
the bottom; layer 0 has none, so it never attends across layers): l's own pool is already what
its cross-token attention reads.
Training is parallel over T; decoding keeps a constant-size cache (``MemMambaState``).
Statistics (``MixerOutput.stats``) come with every pass over a sequence, none with decoding.

Cross-layer attention reads earlier layers' pools through the language model: a mixer whose
``reads_layer_memory`` is True is called with ``layer_memory``, the list of what the layers
before it returned as ``MixerOutput.memory`` in the same pass (a ``PoolView`` here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memlab.models.layers.mamba import Mamba, MambaState
from memlab.models.layers.memmamba.chunk_layout import group_by_chunk, ungroup
from memlab.models.layers.memmamba.config import MemMambaConfig
from memlab.models.layers.memmamba.note_pool import NotePool
from memlab.models.layers.memmamba.pool_attention import PoolAttention
from memlab.models.layers.memmamba.pools import Pools, PoolState, PoolView
from memlab.models.mixer import MixerOutput
from memlab.models.modules.autocast_input import autocast_input
from memlab.models.schema import Schema


@dataclass
class MemMambaState:
    """Decoding cache of one MemMamba layer; its size does not depend on the context length.

    backbone: the Mamba cache (conv tail, SSM state). pool: the note pool's (``PoolState``).
    """

    backbone: MambaState
    pool: PoolState


class MemMamba(nn.Module):
    """MemMamba token mixer. x: [B, T, D] -> MixerOutput with hidden [B, T, D] (x's dtype),
    its statistics (pool_fill, priority, gate, ...) and the layer's ``PoolView`` as ``memory``.

    Args:
        d_model: D.
        layer_idx: position in the stack (decides where cross-layer attention runs).
        options: ``MemMambaConfig``'s fields, the backbone's as the mapping ``backbone``.

    Parameters: backbone (a ``Mamba``), pool (a ``NotePool``: summary_proj [S, D], summary_norm
    [S], scorer [1, D] + bias with the learned scorer); with cross_token: token_attn (a
    ``PoolAttention``), gamma_tok [D] (not "residual"), gate [D, D] + bias ("gated"); at
    cross-layer layers: layer_attn, gamma_lay [D] (not "residual") and layer_embed
    [g, num_heads · head_dim]. The γ and the layer embeddings are flagged ``_no_weight_decay``.
    """

    def __init__(self, d_model: int, layer_idx: int = 0, **options: Any) -> None:
        super().__init__()
        self.config = config = MemMambaConfig.build(options)
        self.layer_idx = layer_idx
        # Built in this order (backbone, notes, attentions) so that a seed gives the same weights.
        backbone = config.backbone.to_dict()
        self.backbone = Mamba(d_model, layer_idx, prefix=f"{Schema.PREFIX}.backbone", **backbone)
        self.pool = NotePool(d_model, config)
        self._register_load_state_dict_pre_hook(_pool_keys_of_older_checkpoints)
        weighted = config.fusion != "residual"
        attention = (d_model, config.summary_dim, config.num_heads, config.head_dim)

        self.token_attn = PoolAttention(*attention) if config.cross_token else None
        self.gamma_tok = nn.Parameter(torch.zeros(d_model)) if config.cross_token and weighted else None
        self.gate = nn.Linear(d_model, d_model) if config.cross_token and config.fusion == "gated" else None

        # Cross-layer attention needs at least one earlier layer.
        self.cross_layer_span = min(config.span, layer_idx)
        period = config.cross_layer_period
        self.reads_layer_memory = period > 0 and (layer_idx + 1) % period == 0 and layer_idx > 0
        self.layer_attn, self.gamma_lay, self.layer_embed = None, None, None
        if self.reads_layer_memory:
            self.layer_attn = PoolAttention(*attention)
            self.gamma_lay = nn.Parameter(torch.zeros(d_model)) if weighted else None
            # Row d − 1 is added to the keys of the slots from the layer d below this one.
            width = config.num_heads * config.head_dim
            self.layer_embed = nn.Parameter(torch.randn(self.cross_layer_span, width) * 0.02)
        for p in (self.gamma_tok, self.gamma_lay, self.layer_embed):
            if p is not None:
                p._no_weight_decay = True  # fusion gains and layer tags, not projections

    @property
    def attends(self) -> bool:
        """The layer reads a pool (cross-token or cross-layer attention)."""
        return self.token_attn is not None or self.layer_attn is not None

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_len: int | None = None
    ) -> MemMambaState:
        """An empty cache: the backbone's and the note pool's."""
        return MemMambaState(
            backbone=self.backbone.init_state(batch_size, device, dtype),
            pool=self.pool.init_state(batch_size, device, dtype),
        )

    @property
    def step_period(self) -> int:
        """Positions after which ``schedule_step``'s choice repeats: a chunk."""
        return self.config.chunk_size

    def schedule_step(self, state: MemMambaState, position: int) -> None:
        """Tell the next decoding step that its token has ``position`` tokens before it: a token
        that does not end its chunk skips the note pool's selection, which would give the pool
        back unchanged (CUDA-graph decoding records a step of each kind)."""
        state.pool.skip_notes = (position + 1) % self.config.chunk_size != 0

    def state_size(self, context_length: int) -> int:
        """Elements per sequence: the backbone's state plus the pool's K + R notes, each a summary
        and a priority; the running max-pool of the unfinished chunk is not counted."""
        notes = (self.config.pool_size + self.config.recent_slots) * (self.config.summary_dim + 1)
        return self.backbone.state_size(context_length) + notes

    def forward(
        self,
        x: torch.Tensor,
        state: MemMambaState | None = None,
        cu_seqlens: torch.Tensor | None = None,
        layer_memory: list[PoolView | None] | None = None,
    ) -> MixerOutput:
        """x: [B, T, D]; state: from ``init_state``, continued and updated in place; cu_seqlens:
        int [N+1] packed documents (B == 1, no state), each with its own chunks and pools;
        layer_memory: the earlier layers' ``PoolView``s of this pass (needed iff
        ``reads_layer_memory``).

        Returns hidden [B, T, D] in x's dtype, the layer's PoolView as ``memory`` and, unless
        decoding (a state is given), stats (pool fill, mean priority, fusion gains and gate,
        attention entropy). One token with a state and grad off is a decoding step: ``step``.
        """
        if self.reads_layer_memory and layer_memory is None:
            raise ValueError(
                f"MemMamba layer {self.layer_idx} reads earlier layers' pools: call it with layer_memory"
            )
        decoding = state is not None
        if decoding and x.shape[1] == 1 and cu_seqlens is None and not torch.is_grad_enabled():
            return self.step(x, state, layer_memory)
        pools = self.pool(x, state.pool if decoding else None, cu_seqlens)
        layout, weights = pools.layout, {}
        # The gate and the attentions' queries are all projections of u, and so is the
        # backbone's input ū: it is formed in the dtype they run in (bf16 under autocast),
        # which its in_proj would cast it to anyway.
        u = autocast_input(x) if self.attends else x
        grouped = group_by_chunk(u, layout, 0.0) if self.attends else None  # [B, C, W, D]
        u_bar, gate = u, None
        if self.token_attn is not None:
            # γ_tok ⊙ c_tok, γ folded into the attention's output projection (one [D, ·]
            # weight scaled, not two [B, T, D] products and a reduction for γ's gradient).
            view = pools.view
            c_tok, weights["attn"] = self.token_attn(
                grouped, view.summary, view.log_priority, None, self.gamma_tok
            )
            c_tok = ungroup(c_tok, layout)
            if self.gate is not None:
                gate = torch.sigmoid(self.gate(u))
                u_bar = torch.addcmul(u_bar, gate, c_tok)
            else:
                u_bar = u_bar + c_tok
        if self.layer_attn is not None:
            summary, log_priority, key_offset = self._layer_pools(layer_memory)
            c_lay, weights["layer_attn"] = self.layer_attn(
                grouped, summary, log_priority, key_offset, self.gamma_lay
            )
            u_bar = u_bar + ungroup(c_lay, layout)
        hidden = self.backbone(u_bar, state.backbone if decoding else None, cu_seqlens).hidden
        # Statistics describe passes over sequences (training, evaluation), not decoding steps.
        stats = {} if decoding else self._stats(pools, gate, weights)
        return MixerOutput(hidden, stats=stats, memory=pools.view)

    @torch.no_grad()
    def step(
        self, x: torch.Tensor, state: MemMambaState, layer_memory: list[PoolView | None] | None = None
    ) -> MixerOutput:
        """One decoding token: x [B, 1, D] -> MixerOutput with hidden [B, 1, D] and the pool the
        token read as ``memory``; ``state`` is continued in place. The same function as
        ``forward`` at T = 1, without its chunk grids: the pool is the state's, the next one a
        top-K over its K + R slots and the token's note (``NotePool.step``), the attentions
        read K + R slots (``PoolAttention.step``), and the backbone takes its own step."""
        view = self.pool.step(x, state.pool)
        u = autocast_input(x[:, 0]) if self.attends else x[:, 0]  # [B, D]
        u_bar = u
        if self.token_attn is not None:
            c_tok = self.token_attn.step(u, view.summary[:, 0], view.log_priority[:, 0], None, self.gamma_tok)
            if self.gate is not None:
                u_bar = torch.addcmul(u_bar, torch.sigmoid(self.gate(u)), c_tok)
            else:
                u_bar = u_bar + c_tok
        if self.layer_attn is not None:
            summary, log_priority, key_offset = self._layer_pools(layer_memory)
            u_bar = u_bar + self.layer_attn.step(
                u, summary[:, 0], log_priority[:, 0], key_offset, self.gamma_lay
            )
        return MixerOutput(self.backbone.step(u_bar[:, None], state.backbone).hidden, memory=view)

    def _layer_pools(
        self, layer_memory: list[PoolView | None]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The slots cross-layer attention reads: the pools of the ``cross_layer_span`` layers
        below, concatenated -> summary [B, C, slots, S], log_priority [B, C, slots] and the key
        offsets [layers, H·d_h] of the layers' equal groups of slots (their layer embeddings)."""
        summaries, priorities, offsets = [], [], []
        first = max(0, len(layer_memory) - self.cross_layer_span)
        for j in range(first, len(layer_memory)):
            view = layer_memory[j]
            if view is None:  # a layer without notes (not a MemMamba layer)
                continue
            summaries.append(view.summary)
            priorities.append(view.log_priority)
            offsets.append(self.layer_embed[len(layer_memory) - j - 1])
        if not summaries:
            raise ValueError(f"MemMamba layer {self.layer_idx}: no earlier layer offers a note pool")
        if len({s.shape[2] for s in summaries}) > 1:
            raise ValueError(f"MemMamba layer {self.layer_idx}: the pools below differ in size")
        return torch.cat(summaries, dim=2), torch.cat(priorities, dim=2), torch.stack(offsets)

    @torch.no_grad()
    def _stats(
        self, pools: Pools, gate: torch.Tensor | None, weights: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The mean gate; per retrieval attention (``attn``, ``layer_attn``) its mean entropy
        (nats) and mean weight of its null slot over real tokens and heads; the pool's fill and
        priority; the fusion gains' mean magnitudes."""
        stats = {} if gate is None else {"gate": gate.mean(dtype=torch.float32)}
        for name, probs in weights.items():
            per_token = ungroup(probs, pools.layout)  # [B, T, H, slots + 1]
            rows = per_token.numel() // per_token.shape[-1]  # (token, head) pairs
            stats[f"{name}_entropy"] = torch.special.entr(per_token).sum().float() / rows
            stats[f"{name}_null"] = per_token[..., -1].float().mean()
        stats |= pools.stats()
        for name, gamma in (("gamma_tok", self.gamma_tok), ("gamma_lay", self.gamma_lay)):
            if gamma is not None:
                stats[name] = gamma.float().abs().mean()
        return stats


# Checkpoints written before the note pool was a module hold its parameters at the layer's level.
_POOL_PARAMETERS = ("summary_proj.", "summary_norm.", "scorer.")


def _pool_keys_of_older_checkpoints(state_dict: dict, prefix: str, *_: Any) -> None:
    """Rename ``<layer>.summary_proj.weight`` (and the norm's, the scorer's) to ``<layer>.pool.*``."""
    for key in [
        k for k in state_dict if k.startswith(prefix) and k[len(prefix) :].startswith(_POOL_PARAMETERS)
    ]:
        state_dict[f"{prefix}pool.{key[len(prefix) :]}"] = state_dict.pop(key)
