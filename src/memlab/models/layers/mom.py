"""MoM — Mixture-of-Memories (arXiv 2502.13685): E gated-delta-rule memories per head, a top-k
router that decides which of them read and write each token, and one shared memory that sees
every token. With one memory, top-1 and no shared memory the same layer is Gated DeltaNet.

Every (sequence, memory) pair is one segment: an independent recurrence over the tokens
routed to that memory, in time order; the shared memory is one more segment per sequence
holding every token. All segments of a layer go through ONE gated-delta-rule call, and the
outputs are gathered back to their tokens and mixed with the routing weights. Two layouts
(mom_dispatch.py), neither of which depends on the routing for its shapes, so neither
synchronises with the host (bar the padded rows of packed documents, sized on the host):

- packed, when the kernel backend is Triton and no decoding state is passed (training,
  prefill from scratch, packed documents; with one memory only for packed documents, as
  the padded rows are then the sequences themselves): the routed tokens laid end to end, one
  variable-length kernel launch over the segments, per-memory projections as one grouped
  matmul over them (``torch._grouped_mm`` for bf16 on Hopper, a dense matmul of every memory
  and a gather elsewhere), k/v convs that restart at every segment boundary.
- padded, for the PyTorch twin and for decoding: each segment is a row of length T, its
  tokens compacted to the front and the rest padding with decay g = 0 and β = 0, which leaves
  the state untouched; the price is M·T token slots per sequence instead of (k + shared)·T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.errors import ConfigError
from memlab.kernels import chunk_gated_delta_rule, combine_routed, fused_recurrent_gated_delta_rule, l2norm
from memlab.kernels.backend import BACKENDS, resolve_fp32_backend
from memlab.kernels.gated_delta_rule.torch_chunk import OP as CHUNK_OP
from memlab.kernels.limits import MAX_COMBINE_SLOTS, MAX_CONV_WIDTH, MAX_HEAD_DIM
from memlab.models.layers.config_types import require_types
from memlab.models.layers.mom_dispatch import (
    dispatch_rows,
    grouped_mm_fits,
    packed_layout,
    padded_layout,
    project_packed,
)
from memlab.models.mixer import MixerOutput
from memlab.models.modules.autocast_input import autocast_input
from memlab.models.modules.gated_rmsnorm import GatedRMSNorm
from memlab.models.modules.init import inverse_softplus, log_uniform_steps
from memlab.models.modules.short_conv import ShortConvolution
from memlab.models.modules.varlen import check_packed, document_bounds, document_positions


@dataclass
class MoMState:
    """Decoding cache of one MoM layer; its size does not depend on the context length.

    memory: [B, M, H, K, V] fp32 (fp64 for an fp64 model): the E routed memories, then the
        shared one if the layer has it (M = E or E + 1). One tensor, so that a decoding step
        hands it to the kernel without copying.
    q_tail: [B, H·K, W−1]; k_tail: [B, M, H·K, W−1]; v_tail: [B, M, H·V, W−1], model dtype:
        the last W−1 conv inputs of the sequence (q) and of each memory's routed subsequence (k, v).
    num_routed: E.
    """

    memory: torch.Tensor
    q_tail: torch.Tensor
    k_tail: torch.Tensor
    v_tail: torch.Tensor
    num_routed: int

    @property
    def routed(self) -> torch.Tensor:
        """The routed memories' states, [B, E, H, K, V]."""
        return self.memory[:, : self.num_routed]

    @property
    def shared(self) -> torch.Tensor | None:
        """The shared memory's state [B, H, K, V], or None without a shared memory."""
        return self.memory[:, self.num_routed] if self.memory.shape[1] > self.num_routed else None


class MoMAttention(nn.Module):
    """Mixture-of-Memories token mixer. x: [B, T, D] -> MixerOutput with hidden [B, T, D].

    Args:
        d_model: D.
        layer_idx: position in the stack.
        num_heads: H.
        head_dim: K, the key dim of each head (1..256).
        expand_v: value dim V = K · expand_v (1..256).
        num_memories: E, routed memories per head.
        topk: memories each token is routed to (1..E).
        shared_mem: add one memory that every token reads and writes.
        aux_loss_weight: λ of the load-balancing loss returned as ``router_balance`` (>= 0).
        conv_size: width of the short causal convolutions on q, k and v.
        norm_eps: epsilon of the gated output RMSNorm.
        backend: kernel backend, None (from $MEMLAB_KERNEL_BACKEND) | "auto" | "triton" | "torch";
            where it resolves to "triton" (CUDA under "auto") the layer takes the packed layout.

    Parameters: q projection, router (only when E > 1), per-memory k/v/β/a projections stacked
    as ``memory_proj`` [M, D, H·K + H·V + 2H] (memory E is the shared one), decay A_log [H]
    and dt_bias [H], the three short convs, output gate, gated RMSNorm and output projection.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        num_heads: int = 4,
        head_dim: int = 64,
        expand_v: float = 1,
        num_memories: int = 4,
        topk: int = 2,
        shared_mem: bool = True,
        aux_loss_weight: float = 1e-3,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_config(
            num_heads, head_dim, expand_v, num_memories, topk, aux_loss_weight, conv_size, norm_eps, backend
        )
        value_dim = head_dim * expand_v
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim, self.value_dim = num_heads, head_dim, int(value_dim)
        self.num_memories, self.topk, self.shared_mem = num_memories, topk, shared_mem
        self.aux_loss_weight = aux_loss_weight
        H, K, V = num_heads, head_dim, self.value_dim
        rows = num_memories + int(shared_mem)

        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        # One memory needs no router: softmax over a single logit is constant.
        self.router = nn.Linear(d_model, num_memories, bias=False) if num_memories > 1 else None
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
        self.memory_proj = nn.Parameter(
            torch.empty(rows, d_model, H * K + H * V + 2 * H).uniform_(-bound, bound)
        )
        self.A_log, self.dt_bias = _mamba_decay_init(H)
        self.q_conv = ShortConvolution(H * K, conv_size, backend)
        self.k_conv = ShortConvolution(H * K, conv_size, backend)
        self.v_conv = ShortConvolution(H * V, conv_size, backend)
        self.gate_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, norm_eps, backend)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        self.backend = backend

    @property
    def backend(self) -> str | None:
        """The kernel backend of every op of the layer (see ``__init__``)."""
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        # the convs and the norm run kernel ops of their own: one setting for all of them
        self._backend = value
        for module in (self.q_conv, self.k_conv, self.v_conv, self.norm):
            module.backend = value

    @property
    def num_rows(self) -> int:
        """M: the memories per sequence and head, routed plus shared."""
        return self.num_memories + int(self.shared_mem)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MoMState:
        """An empty cache: zero memories (fp32, or fp64 for fp64) and zero conv tails (``dtype``)."""
        H, K, V, M = self.num_heads, self.head_dim, self.value_dim, self.num_rows
        state_dtype = torch.promote_types(dtype, torch.float32)
        memory = torch.zeros(batch_size, M, H, K, V, device=device, dtype=state_dtype)
        return MoMState(
            memory=memory,
            q_tail=self.q_conv.init_cache(batch_size, device, dtype),
            k_tail=self.k_conv.init_cache(batch_size * M, device, dtype).unflatten(0, (batch_size, M)),
            v_tail=self.v_conv.init_cache(batch_size * M, device, dtype).unflatten(0, (batch_size, M)),
            num_routed=self.num_memories,
        )

    def forward(
        self, x: torch.Tensor, state: MoMState | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> MixerOutput:
        """x: [B, T, D]; state: from ``init_state``, continued and updated in place; cu_seqlens:
        int [N+1] packed documents (B == 1, no state).

        Returns hidden [B, T, D] in x's dtype; aux_losses {"router_balance": λ·L_aux} when E > 1
        and λ > 0; stats {"router_load": f [E]} when E > 1.
        """
        B, T, D = x.shape
        check_packed("MoMAttention", B, cu_seqlens, state)
        if state is None and self._runs_packed(x, cu_seqlens):
            hidden, probs, routed = self._mix_packed(x, cu_seqlens)
            return MixerOutput(hidden, *self._router_outputs(probs, routed, token_mask=None))
        if cu_seqlens is None:
            hidden, probs, routed = self._mix(x, state)
            return MixerOutput(hidden, *self._router_outputs(probs, routed, token_mask=None))
        # For the PyTorch twin each document becomes a batch row padded to the longest one, so
        # routing, convs and memories restart at every document. Sizing the rows reads
        # cu_seqlens on the host, which the twin does anyway; the packed path never does.
        bounds = document_bounds("MoMAttention", cu_seqlens, T)
        longest = max(end - start for start, end in bounds)
        doc, position = document_positions(cu_seqlens, T)
        rows = x.new_zeros(len(bounds), longest, D).index_put((doc, position), x[0])
        token_mask = torch.zeros(len(bounds), longest, dtype=torch.bool, device=x.device)
        token_mask = token_mask.index_put((doc, position), torch.ones_like(doc, dtype=torch.bool))
        hidden, probs, routed = self._mix(rows, None)
        return MixerOutput(hidden[doc, position][None], *self._router_outputs(probs, routed, token_mask))

    def _runs_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
        """Whether to take the packed layout: when the kernel runs on the Triton backend, except
        with a single memory and no packed documents, where the padded rows are the sequences
        themselves (Gated DeltaNet) and dispatching would only copy them."""
        if self.num_rows == 1 and cu_seqlens is None:
            return False
        return resolve_fp32_backend(self.backend, x, CHUNK_OP, (x,)) == "triton"

    def _mix_packed(
        self, x: torch.Tensor, cu_seqlens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The layer on x [B, T, D] in the packed layout: B sequences, or the documents of
        cu_seqlens (B == 1; its values are trusted: checking them would cost a host sync).

        Returns as ``_mix``.
        """
        B, T, D = x.shape
        H, K, V, M = self.num_heads, self.head_dim, self.value_dim, self.num_rows
        compute = torch.promote_types(x.dtype, torch.float32)
        probs, routed, visited, chosen, weights = self._route(x, compute)
        if cu_seqlens is None:
            sequence = torch.arange(B * T, device=x.device) // T
            starts = torch.arange(B, device=x.device) * T
            ends = starts + T
        else:
            sequence, _ = document_positions(cu_seqlens, T)
            starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
        S = chosen.shape[-1]
        segments = packed_layout(visited.reshape(B * T, M), chosen.reshape(B * T, S), sequence, starts, ends)

        # q is shared by all memories, so its conv runs over each sequence in time order, and it
        # is normalised before it is copied to its S visits; the k and v convs run over the
        # packed segments and restart at every (sequence, memory) boundary, so they never read
        # another memory's or sequence's tokens.
        q, _ = self.q_conv(self.q_proj(x), cu_seqlens=cu_seqlens)
        q = l2norm(q.reshape(B * T, H, K), backend=self.backend)
        q = dispatch_rows(q.view(B * T, H * K), segments, self.backend)
        flat = autocast_input(x.reshape(B * T, D))
        grouped = grouped_mm_fits(flat, self.memory_proj)
        k, v, b, a = project_packed(flat, self.memory_proj, segments, grouped, self.backend).split(
            [H * K, H * V, H, H], dim=-1
        )
        k, _ = self.k_conv(k[None], cu_seqlens=segments.cu_seqlens)
        v, _ = self.v_conv(v[None], cu_seqlens=segments.cu_seqlens)
        beta = b.to(compute).sigmoid()
        g = -self.A_log.to(compute).exp() * F.softplus(a.to(compute) + self.dt_bias.to(compute))

        N = segments.source.numel()
        o_packed, _ = chunk_gated_delta_rule(
            q.view(1, N, H, K).to(k.dtype),
            l2norm(k.view(1, N, H, K), backend=self.backend),
            v.view(1, N, H, V),
            g.view(1, N, H),
            beta.view(1, N, H),
            scale=K**-0.5,
            cu_seqlens=segments.cu_seqlens,
            use_qk_l2norm_in_kernel=False,  # normalised above
            backend=self.backend,
        )
        o = combine_routed(
            o_packed.view(N, H * V), segments.destination, weights.reshape(B * T, S), self.backend
        ).to(x.dtype)
        o = self.norm(o.view(B, T, H, V), self.gate_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V)), probs, routed

    def _mix(
        self, x: torch.Tensor, state: MoMState | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The layer on a batch of independent sequences x [B, T, D] in the padded layout.

        Returns hidden [B, T, D], the router probabilities [B, T, E] in the compute dtype
        (None when E == 1) and the routing mask [B, T, E] (int64 0/1).
        """
        B, T, D = x.shape
        H, K, V, M = self.num_heads, self.head_dim, self.value_dim, self.num_rows
        compute = torch.promote_types(x.dtype, torch.float32)
        probs, routed, visited, chosen, weights = self._route(x, compute)
        destination, counts = padded_layout(visited, chosen)

        # q is shared by all memories, so its conv runs over the sequence in time order; the k
        # and v convs run per row, over one memory's routed subsequence: they restart at every
        # (sequence, memory) boundary and never read another memory's tokens.
        q, q_tail = self.q_conv(self.q_proj(x), cache=None if state is None else state.q_tail)
        features = torch.cat([x, q], dim=-1)  # dispatched together: one scatter
        S, width = destination.shape[2], features.shape[-1]
        rows = features.new_zeros(B * M * T, width).index_copy(
            0, destination.flatten(), features[:, :, None].expand(B, T, S, width).reshape(-1, width)
        )
        x_rows, q_rows = rows.view(B, M, T, width).split([D, H * K], dim=-1)

        k, v, b, a = torch.einsum("bmtd,mdf->bmtf", x_rows, self.memory_proj).split(
            [H * K, H * V, H, H], dim=-1
        )
        lengths = counts.flatten()
        k, k_tail = self.k_conv(
            k.reshape(B * M, T, H * K), None if state is None else state.k_tail.flatten(0, 1), lengths
        )
        v, v_tail = self.v_conv(
            v.reshape(B * M, T, H * V), None if state is None else state.v_tail.flatten(0, 1), lengths
        )
        time = torch.arange(T, device=x.device)
        real = (time < counts[..., None])[..., None]  # [B, M, T, 1]; padding must not decay or write
        beta = b.to(compute).sigmoid() * real
        g = -self.A_log.to(compute).exp() * F.softplus(a.to(compute) + self.dt_bias.to(compute)) * real

        # T == 1 with a cache is a decoding step; everything else, training at any T included,
        # takes the chunked form.
        kernel = fused_recurrent_gated_delta_rule if state is not None and T == 1 else chunk_gated_delta_rule
        o_rows, final = kernel(
            # under autocast k, v come out of the einsum in the autocast dtype while q does not
            q_rows.reshape(B * M, T, H, K).to(k.dtype),
            k.view(B * M, T, H, K),
            v.view(B * M, T, H, V),
            g.reshape(B * M, T, H),
            beta.reshape(B * M, T, H),
            scale=K**-0.5,
            initial_state=None if state is None else state.memory.flatten(0, 1),
            output_final_state=state is not None,
            use_qk_l2norm_in_kernel=True,
            backend=self.backend,
        )
        o = combine_routed(
            o_rows.reshape(B * M * T, H * V), destination.view(B * T, S), weights.view(B * T, S), self.backend
        ).to(x.dtype)
        o = self.norm(o.view(B, T, H, V), self.gate_proj(x).view(B, T, H, V))
        hidden = self.o_proj(o.reshape(B, T, H * V))

        if state is not None:
            state.memory = final.view(B, M, H, K, V)
            state.q_tail = q_tail
            state.k_tail = k_tail.unflatten(0, (B, M))
            state.v_tail = v_tail.unflatten(0, (B, M))
        return hidden, probs, routed

    def _route(
        self, x: torch.Tensor, compute: torch.dtype
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k routing of x [B, T, D], the shared memory added as one more visit.

        Returns the router probabilities [B, T, E] (``compute`` dtype; None when E == 1), the
        routing mask [B, T, E] (int64 0/1), the visited memories [B, T, M] (int64 0/1, the
        shared one included), chosen [B, T, S] (int64, the S = k + shared memories each
        token visits) and their weights [B, T, S] (``compute``; the shared memory's is 1).
        """
        B, T, _ = x.shape
        E = self.num_memories
        if self.router is None:
            probs = None
            chosen = torch.zeros(B, T, 1, dtype=torch.long, device=x.device)
            weights = torch.ones(B, T, 1, dtype=compute, device=x.device)
        else:
            # in fp32 even under autocast: bf16 logits round near-ties differently depending on
            # the matmul's shape, so the packed and padded layouts could route a token apart
            with torch.autocast(x.device.type, enabled=False):
                probs = F.linear(x.to(compute), self.router.weight.to(compute)).softmax(-1)
            top, chosen = probs.topk(self.topk, dim=-1)
            weights = top / top.sum(-1, keepdim=True)
        # A scatter rather than F.one_hot, which checks index ranges on the host for CPU tensors.
        routed = torch.zeros(B, T, E, dtype=torch.long, device=x.device).scatter_(2, chosen, 1)
        visited = routed
        if self.shared_mem:
            chosen = torch.cat([chosen, chosen.new_full((B, T, 1), E)], dim=2)
            weights = torch.cat([weights, weights.new_ones(B, T, 1)], dim=2)
            visited = torch.cat([routed, routed.new_ones(B, T, 1)], dim=2)
        return probs, routed, visited, chosen, weights

    def _router_outputs(
        self, probs: torch.Tensor | None, routed: torch.Tensor, token_mask: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Load-balancing loss and per-memory loads over the real tokens (token_mask bool [B, T]).

        f_e = share of the k routed slots per token that went to memory e (Σ_e f_e = 1);
        P_e = mean router probability of e; L_aux = E · Σ_e f_e · P_e, weighted by λ.
        """
        if probs is None:
            return {}, {}
        E = self.num_memories
        if token_mask is None:
            token_mask = torch.ones(probs.shape[:2], dtype=torch.bool, device=probs.device)
        real = token_mask[..., None].to(probs.dtype)
        tokens = real.sum().clamp_min(1.0)
        load = (routed * real).sum((0, 1)) / (tokens * self.topk)
        importance = (probs * real).sum((0, 1)) / tokens
        aux = {}
        if self.aux_loss_weight > 0:
            aux["router_balance"] = self.aux_loss_weight * E * (load * importance).sum()
        return aux, {"router_load": load.detach()}


def _mamba_decay_init(num_heads: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A_log [H] with A ~ U(1, 16), and dt_bias [H] = softplus⁻¹(dt) with dt log-uniform in
    [1e-3, 0.1]: per-head decay rates spread over two orders of magnitude, as in Mamba."""
    A = torch.empty(num_heads).uniform_(1, 16)
    A_log = nn.Parameter(A.log())
    dt_bias = nn.Parameter(inverse_softplus(log_uniform_steps(num_heads, 1e-3, 0.1, 1e-4)))
    for p in (A_log, dt_bias):
        p._no_weight_decay = True  # decay rates, not weights
    return A_log, dt_bias


def _check_config(
    num_heads: int,
    head_dim: int,
    expand_v: float,
    num_memories: int,
    topk: int,
    aux_loss_weight: float,
    conv_size: int,
    norm_eps: float,
    backend: str | None,
) -> None:
    """Raise ConfigError naming the first invalid ``model.mixer.*`` key."""
    require_types(
        {
            "num_heads": num_heads,
            "head_dim": head_dim,
            "num_memories": num_memories,
            "topk": topk,
            "conv_size": conv_size,
        },
        {"expand_v": expand_v, "aux_loss_weight": aux_loss_weight, "norm_eps": norm_eps},
    )
    value_dim = head_dim * expand_v
    if num_heads < 1:
        raise ConfigError(f"model.mixer.num_heads must be >= 1 (got {num_heads})")
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise ConfigError(f"model.mixer.head_dim must be in 1..{MAX_HEAD_DIM} (got {head_dim})")
    if value_dim != int(value_dim) or not 0 < value_dim <= MAX_HEAD_DIM:
        raise ConfigError(
            f"model.mixer.expand_v must make head_dim · expand_v a whole number in 1..{MAX_HEAD_DIM} "
            f"(got head_dim · expand_v = {value_dim})"
        )
    if num_memories < 1:
        raise ConfigError(f"model.mixer.num_memories must be >= 1 (got {num_memories})")
    if not 1 <= topk <= num_memories:
        raise ConfigError(
            f"model.mixer.topk must be in 1..model.mixer.num_memories={num_memories} (got {topk})"
        )
    if aux_loss_weight < 0:
        raise ConfigError(f"model.mixer.aux_loss_weight must be >= 0 (got {aux_loss_weight})")
    if topk + 1 > MAX_COMBINE_SLOTS:  # each token combines topk routed memories and the shared one
        raise ConfigError(f"model.mixer.topk must be at most {MAX_COMBINE_SLOTS - 1} (got {topk})")
    if not 1 <= conv_size <= MAX_CONV_WIDTH:
        raise ConfigError(f"model.mixer.conv_size must be in 1..{MAX_CONV_WIDTH} (got {conv_size})")
    if norm_eps <= 0:
        raise ConfigError(f"model.mixer.norm_eps must be > 0 (got {norm_eps})")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(
            f"model.mixer.backend must be null or one of {', '.join(BACKENDS)} (got {backend!r})"
        )
