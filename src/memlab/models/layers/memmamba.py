"""MemMamba (arXiv 2510.03279) as specified in memmamba.md: a Mamba-1 layer that takes notes.

With u the mixer input (already RMS-normed by the block), per layer l:
    notes:   per chunk c of w tokens, m_c = maxpool_w(u_c); summary s_c = RMSNorm(W_s m_c) and
             priority π_c = sigmoid(w_π · m_c + b_π) (or a fixed positional schedule)
    pool:    the tokens of chunk c read the K highest-priority notes of chunks < c, and with
             R recent_slots also the notes of chunks c−R..c−1 (a FIFO; the K best then come
             from chunks < c−R) (``note_pool``: causal, parallel, equal to sequential
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
"The last g layers" of the spec are read as the g layers *below* l (l − g … l − 1, fewer near
the bottom; layer 0 has none, so it never attends across layers): l's own pool is already what
its cross-token attention reads.
Training is parallel over T; decoding keeps a constant-size cache (``MemMambaState``).

Cross-layer attention reads earlier layers' pools through the language model: a mixer whose
``reads_layer_memory`` is True is called with ``layer_memory``, the list of what the layers
before it returned as ``MixerOutput.memory`` in the same pass (a ``PoolView`` here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.errors import ConfigError
from memlab.models.layers.config_types import is_int
from memlab.models.layers.mamba import Mamba, MambaState
from memlab.models.layers.note_pool import (
    ChunkLayout,
    chunk_layout,
    gather_slots,
    group_by_chunk,
    select_pools,
    ungroup,
)
from memlab.models.layers.pool_attention import PoolAttention
from memlab.models.mixer import MixerOutput
from memlab.models.modules.autocast_input import autocast_input
from memlab.models.modules.varlen import check_packed, document_bounds

FUSIONS = ("gated", "weighted", "residual")
NOTE_SCORERS = ("learned", "positional")
# Priority of a chunk outside the positional schedule's window (inside: 1).
_OFF_SCHEDULE_PRIORITY = 0.5


@dataclass
class MemMambaState:
    """Decoding cache of one MemMamba layer; its size does not depend on the context length.

    backbone: the Mamba cache (conv tail, SSM state).
    summary: [B, K + R, summary_dim] model dtype, the pool's notes: the K best (best first),
        then the R recent ones (R = recent_slots).
    log_priority: [B, K + R] fp32 (fp64 for fp64 models), their log-priorities (−inf when empty).
    valid: bool [B, K + R], which slots hold a note.
    recent_index: int64 [B, R], the chunk index of each recent note.
    chunk_max: [B, D] model dtype, running max-pool of the unfinished chunk (−inf when empty).
    position: tokens seen so far.
    """

    backbone: MambaState
    summary: torch.Tensor
    log_priority: torch.Tensor
    valid: torch.Tensor
    recent_index: torch.Tensor
    chunk_max: torch.Tensor
    position: int = 0


@dataclass
class PoolView:
    """What a MemMamba layer offers later layers for one pass: the pool each chunk reads.

    summary: [B, C, K + R, summary_dim]; log_priority: [B, C, K + R], −inf at empty slots. The
    chunks C are the pass's, the same in every layer (one ``chunk_size`` for the whole stack).
    """

    summary: torch.Tensor
    log_priority: torch.Tensor


class MemMamba(nn.Module):
    """MemMamba token mixer. x: [B, T, D] -> MixerOutput with hidden [B, T, D] (x's dtype),
    its statistics (pool_fill, priority, gate, ...) and the layer's ``PoolView`` as ``memory``.

    Args:
        d_model: D.
        layer_idx: position in the stack (decides where cross-layer attention runs).
        chunk_size: w, tokens per note.
        pool_size: K, notes in a layer's pool chosen by priority.
        recent_slots: R, notes of the most recent chunks a pool also holds (0: none).
        summary_dim: width of a note's summary.
        num_heads, head_dim: shape of both retrieval attentions.
        cross_token: attend from each token to its layer's pool.
        cross_layer_period: p; layers with (layer_idx + 1) mod p == 0 attend to earlier
            layers' pools; 0 turns cross-layer attention off.
        cross_layer_span: g, how many earlier layers those read; None = p.
        fusion: "gated" | "weighted" | "residual", how retrieved context joins u.
        note_scorer: "learned" (sigmoid of a linear score of the max-pool) or "positional"
            (priority 1 for chunks starting at a position t with t % note_period < note_window,
            1/2 otherwise).
        note_period, note_window: the positional schedule.
        norm_eps: epsilon of the summary RMSNorm.
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init_floor, conv_bias, bias,
            backend: the Mamba backbone's (see ``memlab.models.layers.Mamba``).

    Parameters: backbone (a ``Mamba``), summary_proj [S, D], summary_norm [S], scorer [1, D] +
    bias (learned scorer); with cross_token: token_attn (a ``PoolAttention``), gamma_tok [D]
    (not "residual"), gate [D, D] + bias ("gated"); at cross-layer layers: layer_attn,
    gamma_lay [D] (not "residual") and layer_embed [g, num_heads · head_dim]. The γ and the
    layer embeddings are flagged ``_no_weight_decay``.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        chunk_size: int = 32,
        pool_size: int = 50,
        recent_slots: int = 0,
        summary_dim: int = 64,
        num_heads: int = 4,
        head_dim: int = 64,
        cross_token: bool = True,
        cross_layer_period: int = 4,
        cross_layer_span: int | None = None,
        fusion: str = "gated",
        note_scorer: str = "learned",
        note_period: int = 200,
        note_window: int = 50,
        norm_eps: float = 1e-5,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        span = _check_config(
            chunk_size=chunk_size,
            pool_size=pool_size,
            recent_slots=recent_slots,
            summary_dim=summary_dim,
            num_heads=num_heads,
            head_dim=head_dim,
            cross_token=cross_token,
            cross_layer_period=cross_layer_period,
            cross_layer_span=cross_layer_span,
            fusion=fusion,
            note_scorer=note_scorer,
            note_period=note_period,
            note_window=note_window,
            norm_eps=norm_eps,
        )
        self.layer_idx = layer_idx
        self.chunk_size, self.pool_size, self.summary_dim = chunk_size, pool_size, summary_dim
        self.recent_slots = recent_slots
        self.fusion, self.note_scorer = fusion, note_scorer
        self.note_period, self.note_window = note_period, note_window
        self.backbone = Mamba(
            d_model,
            layer_idx,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_rank=dt_rank,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init_floor=dt_init_floor,
            conv_bias=conv_bias,
            bias=bias,
            backend=backend,
        )
        self.summary_proj = nn.Linear(d_model, summary_dim, bias=False)
        self.summary_norm = nn.RMSNorm(summary_dim, eps=norm_eps)
        self.scorer = nn.Linear(d_model, 1) if note_scorer == "learned" else None
        weighted = fusion != "residual"

        self.token_attn = PoolAttention(d_model, summary_dim, num_heads, head_dim) if cross_token else None
        self.gamma_tok = nn.Parameter(torch.zeros(d_model)) if cross_token and weighted else None
        self.gate = nn.Linear(d_model, d_model) if cross_token and fusion == "gated" else None

        # Cross-layer attention needs at least one earlier layer.
        self.cross_layer_span = min(span, layer_idx)
        self.reads_layer_memory = (
            cross_layer_period > 0 and (layer_idx + 1) % cross_layer_period == 0 and layer_idx > 0
        )
        self.layer_attn, self.gamma_lay, self.layer_embed = None, None, None
        if self.reads_layer_memory:
            self.layer_attn = PoolAttention(d_model, summary_dim, num_heads, head_dim)
            self.gamma_lay = nn.Parameter(torch.zeros(d_model)) if weighted else None
            # Row d − 1 is added to the keys of the slots from the layer d below this one.
            self.layer_embed = nn.Parameter(torch.randn(self.cross_layer_span, num_heads * head_dim) * 0.02)
        for p in (self.gamma_tok, self.gamma_lay, self.layer_embed):
            if p is not None:
                p._no_weight_decay = True  # fusion gains and layer tags, not projections

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MemMambaState:
        """An empty cache: the backbone's, an empty pool and an empty running max-pool."""
        slots, score_dtype = self.pool_size + self.recent_slots, torch.promote_types(dtype, torch.float32)
        d_model = self.summary_proj.in_features
        return MemMambaState(
            backbone=self.backbone.init_state(batch_size, device, dtype),
            summary=torch.zeros(batch_size, slots, self.summary_dim, device=device, dtype=dtype),
            log_priority=torch.full((batch_size, slots), float("-inf"), device=device, dtype=score_dtype),
            valid=torch.zeros(batch_size, slots, device=device, dtype=torch.bool),
            recent_index=torch.zeros(batch_size, self.recent_slots, device=device, dtype=torch.long),
            chunk_max=torch.full((batch_size, d_model), float("-inf"), device=device, dtype=dtype),
        )

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

        Returns hidden [B, T, D] in x's dtype, the layer's PoolView as ``memory`` and, without
        a state, stats (pool fill, mean priority, fusion gains and gate, attention entropy).
        """
        B, T, _ = x.shape
        check_packed("MemMamba", B, cu_seqlens, state)
        if cu_seqlens is not None:
            segments = [(s, e, 0) for s, e in document_bounds("MemMamba", cu_seqlens, T) if e > s]
        else:
            segments = [(0, T, 0 if state is None else state.position)]
        if self.reads_layer_memory and layer_memory is None:
            raise ValueError(
                f"MemMamba layer {self.layer_idx} reads earlier layers' pools: call it with layer_memory"
            )
        layout = chunk_layout(self.chunk_size, segments, self.recent_slots, x.device)
        C, K, R = layout.num_chunks, self.pool_size, self.recent_slots

        # Notes of this pass's chunks; the first continues the state's unfinished chunk.
        # max, not amax: its backward scatters into the first maximum of each chunk (2 kernels)
        # where amax's shares the gradient among ties (4 kernels over [B, C, W, D]); both are
        # subgradients of the max-pool, and ties are common only in 16-bit models.
        chunk_max = group_by_chunk(x, layout, float("-inf")).max(dim=2).values  # [B, C, D]
        if state is not None:
            chunk_max = torch.cat(
                [torch.maximum(chunk_max[:, :1], state.chunk_max[:, None]), chunk_max[:, 1:]], 1
            )
        # The norm in its weight's dtype: under autocast the projection comes out in bf16.
        projected = self.summary_proj(chunk_max).to(self.summary_norm.weight.dtype)
        summary = self.summary_norm(projected).to(x.dtype)  # [B, C, S]
        log_priority = self._log_priority(chunk_max, layout)  # [B, C]

        # Candidates: the carried K best and R recent notes (none without a state), then this
        # pass's chunks, oldest first. A carried recent note joins the K-best competition once
        # it falls out of the FIFO window of the chunk asking.
        state_in = self.init_state(B, x.device, x.dtype) if state is None else state
        cand_summary = torch.cat([state_in.summary, summary], dim=1)  # [B, K + R + C, S]
        cand_priority = torch.cat(
            [state_in.log_priority, log_priority.to(state_in.log_priority.dtype)], dim=1
        )
        carried_recent = state_in.valid[:, None, K:].expand(B, C + 1, R)
        leaves_fifo = state_in.recent_index[:, None, :] < (layout.query_index - R)[None, :, None]
        older = torch.cat(
            [
                state_in.valid[:, None, :K].expand(B, C + 1, K),
                carried_recent & leaves_fifo,
                layout.older.expand(B, C + 1, C),
            ],
            dim=2,
        )
        index, valid = select_pools(cand_priority, older, K)  # [B, C + 1, K]
        if R:
            no_best = torch.zeros(B, C + 1, K, dtype=torch.bool, device=x.device)
            recent = torch.cat([no_best, carried_recent & ~leaves_fifo, layout.recent.expand(B, C + 1, C)], 2)
            cand_index = torch.cat(
                [
                    torch.full_like(state_in.recent_index[:, :1], -1).expand(B, K),
                    state_in.recent_index,
                    layout.chunk_index.expand(B, C),
                ],
                dim=1,
            )
            recent_at, recent_valid = select_pools(cand_index.to(cand_priority.dtype), recent, R)
            # Oldest first, so that carried notes stay in age order for the stable sort's ties.
            recent_at, recent_valid = recent_at.flip(-1), recent_valid.flip(-1)
            index, valid = torch.cat([index, recent_at], dim=2), torch.cat([valid, recent_valid], dim=2)
        pool_summary = gather_slots(cand_summary, index)  # [B, C + 1, K + R, S]
        pool_priority = gather_slots(cand_priority, index).masked_fill(~valid, float("-inf"))
        view = PoolView(pool_summary[:, :C], pool_priority[:, :C])

        stats: dict[str, torch.Tensor] = {}
        attends = self.token_attn is not None or self.layer_attn is not None
        # The gate and the attentions' queries are all projections of x, and so is the
        # backbone's input ū = x + ...: it is formed in the dtype they run in (bf16 under
        # autocast), which its in_proj would cast it to anyway.
        reads = autocast_input(x) if attends else x
        mixed = reads
        grouped = group_by_chunk(reads, layout, 0.0) if attends else None  # [B, C, W, D]
        if self.token_attn is not None:
            # γ ⊙ c with γ folded into the attention's output projection (one [D, ·] weight
            # scaled, not two [B, T, D] products and a reduction for γ's gradient).
            c_tok, probs = self.token_attn(grouped, view.summary, view.log_priority, None, self.gamma_tok)
            c_tok = ungroup(c_tok, layout)
            if self.gate is not None:
                gate = torch.sigmoid(self.gate(reads))
                mixed = torch.addcmul(mixed, gate, c_tok)
                if state is None:
                    stats["gate"] = gate.detach().mean(dtype=torch.float32)
            else:
                mixed = mixed + c_tok
            if state is None:
                stats.update(self._attention_stats("attn", probs, layout))
        if self.layer_attn is not None:
            summary, log_priority, key_offset = self._layer_pools(layer_memory)
            c_lay, probs = self.layer_attn(grouped, summary, log_priority, key_offset, self.gamma_lay)
            mixed = mixed + ungroup(c_lay, layout)
            if state is None:
                stats.update(self._attention_stats("layer_attn", probs, layout))
        out = self.backbone(mixed, state=None if state is None else state.backbone, cu_seqlens=cu_seqlens)

        if state is not None:
            # Copies, not views: a view would keep this pass's [B, C + 1, ...] tensors alive in
            # the cache, whose size must not grow with the length of a prefill.
            state.summary, state.log_priority, state.valid = (
                pool_summary[:, C].clone(),
                pool_priority[:, C].clone(),
                valid[:, C].clone(),
            )
            if R:
                state.recent_index = gather_slots(cand_index, recent_at)[:, C].clone()
            empty = torch.full_like(state.chunk_max, float("-inf"))
            state.chunk_max = empty if layout.ends_chunk else chunk_max[:, -1].clone()
            state.position += T
            return MixerOutput(out.hidden, memory=view)
        with torch.no_grad():
            fill = valid[:, :C].float().mean(-1)  # [B, C] share of the pool each chunk reads
            stats["pool_fill"] = fill[:, layout.token_chunk].mean()
            stats["priority"] = log_priority.float().exp().mean()
            for name, gamma in (("gamma_tok", self.gamma_tok), ("gamma_lay", self.gamma_lay)):
                if gamma is not None:
                    stats[name] = gamma.detach().float().abs().mean()
        return MixerOutput(out.hidden, stats=stats, memory=view)

    def _log_priority(self, chunk_max: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
        """log π of each chunk [B, C], in at least fp32."""
        B, C, _ = chunk_max.shape
        dtype = torch.promote_types(chunk_max.dtype, torch.float32)
        if self.scorer is not None:
            return F.logsigmoid(self.scorer(chunk_max).squeeze(-1).to(dtype))
        start = layout.chunk_index * self.chunk_size
        on = (start % self.note_period) < self.note_window
        value = torch.where(on, 0.0, math.log(_OFF_SCHEDULE_PRIORITY)).to(
            device=chunk_max.device, dtype=dtype
        )
        return value.expand(B, C)

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

    def _attention_stats(
        self, name: str, probs: torch.Tensor, layout: ChunkLayout
    ) -> dict[str, torch.Tensor]:
        """Mean entropy (nats) of a retrieval attention and mean weight of its null slot, over
        real tokens and heads."""
        with torch.no_grad():
            per_token = ungroup(probs, layout)  # [B, T, H, slots + 1]
            rows = per_token.numel() // per_token.shape[-1]  # (token, head) pairs
            return {
                f"{name}_entropy": torch.special.entr(per_token).sum().float() / rows,
                f"{name}_null": per_token[..., -1].float().mean(),
            }


def _check_config(
    *,
    chunk_size: int,
    pool_size: int,
    recent_slots: int,
    summary_dim: int,
    num_heads: int,
    head_dim: int,
    cross_token: bool,
    cross_layer_period: int,
    cross_layer_span: int | None,
    fusion: str,
    note_scorer: str,
    note_period: int,
    note_window: int,
    norm_eps: float,
) -> int:
    """Raise ConfigError naming the first invalid ``model.mixer.*`` key; return the span g."""
    for key, value in (
        ("chunk_size", chunk_size),
        ("pool_size", pool_size),
        ("summary_dim", summary_dim),
        ("num_heads", num_heads),
        ("head_dim", head_dim),
        ("note_period", note_period),
    ):
        if not is_int(value) or value < 1:
            raise ConfigError(f"model.mixer.{key} must be an integer >= 1 (got {value!r})")
    if not is_int(recent_slots) or recent_slots < 0:
        raise ConfigError(f"model.mixer.recent_slots must be an integer >= 0 (got {recent_slots!r})")
    if not isinstance(cross_token, bool):
        raise ConfigError(f"model.mixer.cross_token must be true or false (got {cross_token!r})")
    if not is_int(cross_layer_period) or cross_layer_period < 0:
        raise ConfigError(
            f"model.mixer.cross_layer_period must be an integer >= 0, 0 = off (got {cross_layer_period!r})"
        )
    if cross_layer_span is not None and (not is_int(cross_layer_span) or cross_layer_span < 1):
        raise ConfigError(
            f"model.mixer.cross_layer_span must be null (= cross_layer_period) or an integer >= 1 "
            f"(got {cross_layer_span!r})"
        )
    if fusion not in FUSIONS:
        raise ConfigError(f"model.mixer.fusion must be one of {', '.join(FUSIONS)} (got {fusion!r})")
    if note_scorer not in NOTE_SCORERS:
        raise ConfigError(
            f"model.mixer.note_scorer must be one of {', '.join(NOTE_SCORERS)} (got {note_scorer!r})"
        )
    if not is_int(note_window) or not 0 <= note_window <= note_period:
        raise ConfigError(
            f"model.mixer.note_window must be an integer in [0, note_period={note_period}] "
            f"(got {note_window!r})"
        )
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0:
        raise ConfigError(f"model.mixer.norm_eps must be a number > 0 (got {norm_eps!r})")
    if not cross_token and cross_layer_period == 0:
        raise ConfigError(
            "model.mixer.cross_token=false with cross_layer_period=0 leaves MemMamba no memory path "
            "(that is model=mamba)"
        )
    return cross_layer_period if cross_layer_span is None else cross_layer_span
