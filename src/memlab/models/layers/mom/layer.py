"""The MoM token mixer: routing, q/k/v/β/g, the memories and the gated output norm, written
once over the segment layouts of layout.py."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from memlab.kernels import gated_delta_rule_step, topk_route
from memlab.kernels.limits import MAX_ROUTED_MEMORIES
from memlab.models.layers.mom.config import MoMConfig
from memlab.models.layers.mom.layout import choose_layout
from memlab.models.layers.mom.padded import PaddedLayout
from memlab.models.layers.mom.routing import load_balance, route
from memlab.models.layers.mom.state import MoMState
from memlab.models.mixer import MixerOutput
from memlab.models.modules.autocast_input import autocast_dtype, autocast_input
from memlab.models.modules.gated_rmsnorm import GatedRMSNorm
from memlab.models.modules.init import inverse_softplus, log_uniform_steps
from memlab.models.modules.joined_weights import JoinedWeights
from memlab.models.modules.short_conv import ShortConvolution
from memlab.models.modules.varlen import check_packed, document_rows


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

    The options are checked as a ``MoMConfig``, kept as ``config``. Parameters: q projection,
    router (only when E > 1), per-memory k/v/β/a projections stacked as ``memory_proj``
    [M, D, H·K + H·V + 2H] (memory E is the shared one), decay A_log [H] and dt_bias [H], the
    three short convs, output gate, gated RMSNorm and output projection.
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
        config = MoMConfig(
            num_heads=num_heads,
            head_dim=head_dim,
            expand_v=expand_v,
            num_memories=num_memories,
            topk=topk,
            shared_mem=shared_mem,
            aux_loss_weight=aux_loss_weight,
            conv_size=conv_size,
            norm_eps=norm_eps,
            backend=backend,
        )
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim, self.value_dim = num_heads, head_dim, config.value_dim
        self.num_memories, self.topk, self.shared_mem = num_memories, topk, shared_mem
        self.aux_loss_weight = aux_loss_weight
        H, K, V = num_heads, head_dim, self.value_dim

        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        # One memory needs no router: softmax over a single logit is constant.
        self.router = nn.Linear(d_model, num_memories, bias=False) if num_memories > 1 else None
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
        self.memory_proj = nn.Parameter(
            torch.empty(self.num_rows, d_model, H * K + H * V + 2 * H).uniform_(-bound, bound)
        )
        self.A_log, self.dt_bias = _mamba_decay_init(H)
        self.q_conv = ShortConvolution(H * K, conv_size, backend)
        self.k_conv = ShortConvolution(H * K, conv_size, backend)
        self.v_conv = ShortConvolution(H * V, conv_size, backend)
        self.gate_proj = nn.Linear(d_model, H * V, bias=False)
        self.norm = GatedRMSNorm(V, norm_eps, backend)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        self.backend = backend
        self._joined_projections = JoinedWeights()

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

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MoMAttention:
        self._joined_projections.clear()  # .to() / .cuda(): the step's join follows the weights
        return super()._apply(fn, recurse)

    def prepare_decoding(self, dtype: torch.dtype) -> None:
        """Rebuild the step's joined projection (``step``) from the weights as they are now, in
        ``dtype``, the dtype the step's projections run in (the autocast dtype under autocast)."""
        self._joined_projections.refresh(dtype, *self._joined_sources())

    def _joined_sources(self) -> tuple[torch.Tensor, ...]:
        return self.q_proj.weight, self.gate_proj.weight, self.memory_proj

    @property
    def num_rows(self) -> int:
        """M: the memories per sequence and head, routed plus shared."""
        return self.num_memories + int(self.shared_mem)

    def idle_parameters(self) -> int:
        """Parameters a token does not pass through: the projections of the E − topk routed
        memories it is not sent to (for the FLOPs count, memlab.models.flops)."""
        return (self.num_memories - self.topk) * self.memory_proj[0].numel()

    def state_size(self, context_length: int) -> int:
        """Elements per sequence of the recurrent memories, M · H · K · V, whatever the context
        length (the short convs' tails, a few tokens wide, are not counted)."""
        return self.num_rows * self.num_heads * self.head_dim * self.value_dim

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_len: int | None = None
    ) -> MoMState:
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
        and λ > 0; stats {"router_load": f [E]} when E > 1, except from a decoding step (one
        token with a state and grad off, which ``step`` takes).
        """
        check_packed("MoMAttention", x.shape[0], cu_seqlens, state)
        if state is not None and x.shape[1] == 1 and not torch.is_grad_enabled():
            return self.step(x, state)
        Layout = choose_layout(self.backend, x, self.num_rows, state, cu_seqlens)
        documents = None
        if cu_seqlens is not None and Layout is PaddedLayout:  # it takes documents as rows
            documents = document_rows("MoMAttention", cu_seqlens, x)
            x, cu_seqlens = documents.pad(x), None
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        compute = torch.promote_types(x.dtype, torch.float32)

        u = autocast_input(x)  # cast once for the projections and the router (and saved once)
        # each token's top-k memories (and the shared one) and their weights w_t
        routing = route(u, self.router, self.num_memories, self.topk, self.shared_mem, compute)
        layout = Layout(routing, cu_seqlens, state, self.backend)
        q = layout.time_conv(self.q_conv, self.q_proj(u)).unflatten(-1, (H, K))  # shared by the memories
        q, kvba = layout.dispatch(u, q, self.memory_proj)  # to each visited memory, through its projection
        k, v, b, a = kvba.split([H * K, H * V, H, H], dim=-1)
        k, v = layout.memory_conv(self.k_conv, self.v_conv, k, v)
        beta = b.to(compute).sigmoid()
        g = -self.A_log.to(compute).exp() * F.softplus(a.to(compute) + self.dt_bias.to(compute))  # log α
        # each memory over its tokens: S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀq_t/√K
        o = layout.gated_delta_rule(q, k, v, g, beta, scale=K**-0.5)
        o = layout.combine(o, routing.weights)  # o_t = Σ_m w_tm o_tm over its memories
        # in the projections' dtype: under autocast, x's fp32 would have the norm save an fp32
        # copy of o for its backward, for the same values
        o = self.norm(o.to(u.dtype).view(B, T, H, V), self.gate_proj(u).view(B, T, H, V))
        hidden = self.o_proj(o.reshape(B, T, H * V))

        token_mask = None
        if documents is not None:
            hidden, token_mask = documents.unpad(hidden), documents.mask
        return MixerOutput(hidden, *load_balance(routing, self.topk, self.aux_loss_weight, token_mask))

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: MoMState) -> MixerOutput:
        """One decoding token: x [B, 1, D] -> MixerOutput with hidden [B, 1, D] (no statistics);
        ``state`` is continued in place. The same function as ``forward`` at T = 1 up to
        rounding (and to which of several exactly tied router probabilities is picked), with
        the memories' recurrence, convs and gates in one op (``gated_delta_rule_step``)."""
        B = x.shape[0]
        H, K, V = self.num_heads, self.head_dim, self.value_dim
        token = autocast_input(x[:, 0])  # cast once, for the router (as forward routes) and the GEMV
        weights, visited = self._step_weights(token)
        for name in ("memory", "q_tail", "k_tail", "v_tail"):  # in place: a T = 1 forward with
            setattr(state, name, getattr(state, name).contiguous())  # grad may leave views
        tail_dtype = state.q_tail.dtype  # the model's; under autocast the projections' may differ
        # q, the output gate and every memory's k/v/β/a in one GEMV: at one token a GEMV costs
        # about the same whatever its height, so one beats three
        M, _, width = self.memory_proj.shape
        joined = self._joined_projections(autocast_dtype(token), *self._joined_sources())
        q, gate, kvba = F.linear(token, joined).split([H * K, H * V, M * width], dim=-1)
        k, v, b, a = kvba.unflatten(-1, (M, width)).to(tail_dtype).split([H * K, H * V, H, H], dim=-1)
        q = q.to(tail_dtype)
        o = gated_delta_rule_step(
            q, k, v, a, b, weights, visited, state.memory, state.q_tail, state.k_tail, state.v_tail,
            self.q_conv.weight, self.k_conv.weight, self.v_conv.weight, self.A_log, self.dt_bias,
            scale=K**-0.5, backend=self.backend,
        )  # fmt: skip
        o = self.norm(o.to(gate.dtype).view(B, 1, H, V), gate.view(B, 1, H, V))
        return MixerOutput(self.o_proj(o.reshape(B, 1, H * V)))

    def _step_weights(self, token: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each memory's weight [B, M] for tokens [B, D] (``route``'s renormalised top-k
        probabilities, in fp32; the shared memory's is 1) and whether the token visits it, bool
        [B, M] (a top-k probability may underflow to 0: that memory is still visited); both
        None with one memory, which every token visits at weight 1."""
        if self.router is None:
            return None, None
        backend = self.backend if self.num_memories <= MAX_ROUTED_MEMORIES else "torch"
        return topk_route(token, self.router.weight, self.topk, self.shared_mem, backend=backend)


def _mamba_decay_init(num_heads: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A_log [H] with A ~ U(1, 16), and dt_bias [H] = softplus⁻¹(dt) with dt log-uniform in
    [1e-3, 0.1]: per-head decay rates spread over two orders of magnitude, as in Mamba."""
    A = torch.empty(num_heads).uniform_(1, 16)
    A_log = nn.Parameter(A.log())
    dt_bias = nn.Parameter(inverse_softplus(log_uniform_steps(num_heads, 1e-3, 0.1, 1e-4)))
    for p in (A_log, dt_bias):
        p._no_weight_decay = True  # decay rates, not weights
    return A_log, dt_bias
