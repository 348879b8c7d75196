"""Mamba-1 (arXiv 2312.00752): a selective state-space mixer, the backbone of MemMamba.

Per token, with E = expand · d_model inner channels and an N-dim state per channel:
    x, z = in_proj(x_in)                                   # [E] each
    u = silu(causal depthwise conv(x) + conv bias)         # width d_conv
    dt_low, B, C = x_proj(u)                               # [dt_rank], [N], [N]
    dt = softplus(dt_proj.weight · dt_low + dt_proj.bias)  # [E], > 0
    h = exp(dt ⊙ A) ⊙ h + (dt ⊙ u) Bᵀ,  A = −exp(A_log)   # [E, N]
    y = (h C + D ⊙ u) ⊙ silu(z);  out = out_proj(y)

Parameter names (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj) and shapes follow the
published Mamba checkpoints, so their weights map onto this layer by name.

Activations stay [B, T, channels] throughout: the causal conv (``causal_conv1d``, with the
SiLU fused) reads its half of in_proj's output in place, and the selective scan takes u, delta
and z as transposed views, which its Triton kernels read as they are (z, the other half of
in_proj's rows, after one plain copy). Transposing them to [B, E, T] instead cost about a dozen
layer-sized strided copies per training step (3.5 of 11.2 ms forward+backward on an H100 at
d_model 768, 32K tokens; now 8.6 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from memlab.errors import ConfigError
from memlab.kernels.backend import BACKENDS
from memlab.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update
from memlab.kernels.limits import MAX_CONV_WIDTH, MAX_STATE_SIZE
from memlab.kernels.selective_scan import selective_scan, selective_state_update
from memlab.models.mixer import MixerOutput
from memlab.models.modules.init import inverse_softplus, log_uniform_steps
from memlab.models.modules.short_conv import continue_conv
from memlab.models.modules.varlen import check_packed, document_bounds
from memlab.models.schema import Schema, option

# Time steps per block when a prefill adds the decayed starting state to its outputs: bounds
# the [B, E, N, steps] decay tensor that this needs, whatever the prompt length.
_CARRY_BLOCK = 256


@torch.compiler.disable
def _cumsum(x: torch.Tensor) -> torch.Tensor:
    """x.cumsum(-1), always outside torch.compile (a graph break in every prefill from a
    state, beside the selective scan's own): for few rows, as at batch 1, inductor splits the
    scan across programs, and torch 2.11 cannot generate that kernel when it reads a strided
    input with a broadcast one (here softplus(delta + bias) of a transposed view)."""
    return x.cumsum(-1)


@dataclass(frozen=True)
class MambaConfig(Schema):
    """Mamba-1's options: ``model.mixer.*`` of model=mamba, ``model.mixer.backbone.*`` of MemMamba.

    d_state: N, the state size per inner channel.
    d_conv: width of the causal depthwise convolution.
    expand: E = expand · d_model inner channels (must be a whole number).
    dt_rank: rank of the dt projection, or "auto" for ceil(d_model / 16).
    dt_min, dt_max: range of the initial step sizes dt, sampled log-uniformly per channel.
    dt_init_floor: lower clamp on those sampled step sizes.
    conv_bias: give the convolution a bias. bias: give in_proj and out_proj biases.
    backend: kernel backend, None (from $MEMLAB_KERNEL_BACKEND) | "auto" | "triton" | "torch".
    """

    d_state: int = option(16, ge=1, le=MAX_STATE_SIZE)
    d_conv: int = option(4, ge=1, le=MAX_CONV_WIDTH)
    expand: float = option(2, gt=0)
    dt_rank: Literal["auto"] | int = "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = option(1e-4, ge=0)
    conv_bias: bool = True
    bias: bool = False
    backend: Literal[BACKENDS] | None = None

    def check(self) -> None:
        self.require("dt_rank", self.dt_rank == "auto" or self.dt_rank >= 1, "'auto' or an integer >= 1")
        if not 0 < self.dt_min < self.dt_max:
            raise ConfigError(
                f"{self._key('dt_min')} and {self._key('dt_max')} must satisfy 0 < dt_min < dt_max "
                f"(got dt_min={self.dt_min}, dt_max={self.dt_max})"
            )

    def inner_channels(self, d_model: int, prefix: str = Schema.PREFIX) -> int:
        """E = expand · d_model; ConfigError naming ``<prefix>.expand`` unless a whole number."""
        inner = self.expand * d_model
        if inner != int(inner):
            raise ConfigError(
                f"{prefix}.expand must make expand · d_model a whole number "
                f"(got {self.expand} · {d_model} = {inner})"
            )
        return int(inner)


@dataclass
class MambaState:
    """Decoding cache of one Mamba layer; its size does not depend on the context length.

    conv_tail: [B, E, d_conv − 1] in the model dtype, the last d_conv − 1 conv inputs.
    ssm: [B, E, N] float32 (float64 for a float64 model), the recurrent state h.
    """

    conv_tail: torch.Tensor
    ssm: torch.Tensor


class Mamba(nn.Module):
    """Mamba-1 token mixer. x: [B, T, D] -> MixerOutput with hidden [B, T, D] (x's dtype).

    Args:
        d_model: D.
        layer_idx: position in the stack.
        prefix: the config key the options sit under, which their errors name.
        options: ``MambaConfig``'s fields.

    Parameters: in_proj [2E, D], conv1d (weight [E, 1, d_conv], bias [E]), x_proj
    [dt_rank + 2N, E], dt_proj (weight [E, dt_rank], bias [E]), A_log [E, N], D [E],
    out_proj [D, E]. A_log and D are flagged ``_no_weight_decay``.
    """

    def __init__(
        self, d_model: int, layer_idx: int = 0, *, prefix: str = Schema.PREFIX, **options: Any
    ) -> None:
        super().__init__()
        self.config = config = MambaConfig.build(options, prefix)
        self.layer_idx = layer_idx
        self.d_state, self.d_conv, self.backend = config.d_state, config.d_conv, config.backend
        self.d_inner = config.inner_channels(d_model, prefix)
        self.dt_rank = math.ceil(d_model / 16) if config.dt_rank == "auto" else config.dt_rank
        E, N, R = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * E, bias=config.bias)
        # Only the parameters are used (by causal_conv1d, or continue_conv after a cache's
        # tail); nn.Conv1d keeps the checkpoint layout and its default init.
        self.conv1d = nn.Conv1d(E, E, self.d_conv, groups=E, bias=config.conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=config.bias)
        with torch.no_grad():
            # dt_proj·dt_low starts at unit scale, so that the bias alone sets the initial
            # step sizes: log-uniform in [dt_min, dt_max], i.e. memories from ~1/dt_max to
            # ~1/dt_min tokens. The bias stores softplus⁻¹(dt) = dt + log(1 − e^−dt).
            self.dt_proj.weight.uniform_(-(R**-0.5), R**-0.5)
            steps = log_uniform_steps(E, config.dt_min, config.dt_max, config.dt_init_floor)
            self.dt_proj.bias.copy_(inverse_softplus(steps))
        # S4D-real: channel-independent decay rates 1..N on the state dims.
        self.A_log = nn.Parameter(torch.arange(1, N + 1, dtype=torch.float32).log().repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # decay rates and a skip gain, not weights

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_len: int | None = None
    ) -> MambaState:
        """An empty cache: a zero conv tail (``dtype``) and a zero SSM state (fp32, fp64 for fp64)."""
        state_dtype = torch.promote_types(dtype, torch.float32)
        return MambaState(
            conv_tail=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype),
        )

    def state_size(self, context_length: int) -> int:
        """Elements per sequence of the SSM state, E · N, whatever the context length (the conv's
        tail, d_conv − 1 tokens wide, is not counted)."""
        return self.d_inner * self.d_state

    def forward(
        self, x: torch.Tensor, state: MambaState | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> MixerOutput:
        """x: [B, T, D]; state: from ``init_state``, continued and updated in place (T == 1 is a
        decoding step, longer T a prefill); cu_seqlens: int [N+1] packed documents (B == 1, no
        state), across whose boundaries neither the conv nor the scan carries anything.

        Returns hidden [B, T, D] in x's dtype, no aux losses or stats.
        """
        check_packed("Mamba", x.shape[0], cu_seqlens, state)
        if state is not None and x.shape[1] == 1 and not torch.is_grad_enabled():
            return self.step(x, state)
        # Documents are scanned one by one, which needs their bounds on the host: the only sync
        # of the layer. A varlen scan taking cu_seqlens on the device would remove it.
        bounds = None if cu_seqlens is None else document_bounds("Mamba", cu_seqlens, x.shape[1])

        # Activations stay [B, T, channels] from in_proj to out_proj: the scan reads its
        # [B, E, T] inputs as transposed views of them (z, every other E-wide row of in_proj's
        # output, is copied once to that layout), so no layer-sized transposing copy.
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, E] each
        conv_weight, conv_bias = self.conv1d.weight[:, 0], self.conv1d.bias
        if state is None:
            u = causal_conv1d(x_in, conv_weight, conv_bias, cu_seqlens, "silu", self.backend)
        else:
            u, state.conv_tail = continue_conv(x_in, state.conv_tail, conv_weight, conv_bias)
        dt_low, B_ssm, C_ssm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, self.dt_proj.weight)  # bias added in the scan
        # [B, E, T] and [B, N, T] views
        u, delta, z, B_ssm, C_ssm = (t.transpose(1, 2) for t in (u, delta, z, B_ssm, C_ssm))
        # A = −exp(A_log) in at least fp32 even in a bf16 model: the decays exp(dt·A) are
        # sensitive to it over long contexts.
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

        if bounds is not None:
            # joined along time in [B, T, E], the layout out_proj reads
            docs = [(s, e) for s, e in bounds if e > s]
            y = torch.cat(
                [self._scan(u, delta, A, B_ssm, C_ssm, z, slice(s, e)).transpose(1, 2) for s, e in docs],
                dim=1,
            ).transpose(1, 2)
        elif state is None:
            y = self._scan(u, delta, A, B_ssm, C_ssm, z)
        elif x.shape[1] == 1:
            y = selective_state_update(
                state.ssm, u[:, :, 0], delta[:, :, 0], A, B_ssm[:, :, 0], C_ssm[:, :, 0], D=self.D,
                z=z[:, :, 0], dt_bias=self.dt_proj.bias, dt_softplus=True, backend=self.backend,
            )[:, :, None]  # fmt: skip
        else:
            y, last = self._scan(u, delta, A, B_ssm, C_ssm, z, last=True)
            y_carry, h_carry = self._carry(state.ssm, delta, A, C_ssm, z)
            y = y + y_carry.to(y.dtype)
            state.ssm = last + h_carry
        return MixerOutput(self.out_proj(y.transpose(1, 2)))

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: MambaState) -> MixerOutput:
        """One decoding token: x [B, 1, D] -> MixerOutput with hidden [B, 1, D]; ``state`` is
        continued in place. The same function as ``forward`` at T = 1 up to rounding (dt is
        projected in fp32, not in the weights' dtype), in five launches: in_proj, the conv
        step, x_proj, the state update (which projects dt and takes A from A_log itself) and
        out_proj."""
        x_in, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)  # [B, E] each
        state.conv_tail = state.conv_tail.contiguous()  # a T = 1 forward with grad leaves a view
        u = causal_conv1d_update(
            x_in.to(state.conv_tail.dtype), state.conv_tail, self.conv1d.weight[:, 0], self.conv1d.bias,
            "silu", self.backend,
        )  # fmt: skip
        dt_low, B_ssm, C_ssm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_state_update(
            state.ssm, u, dt_low, None, B_ssm, C_ssm, D=self.D, z=z, dt_bias=self.dt_proj.bias,
            dt_softplus=True, backend=self.backend, dt_proj=self.dt_proj.weight, A_log=self.A_log,
        )  # fmt: skip
        return MixerOutput(self.out_proj(y.to(x.dtype))[:, None])

    def _scan(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        z: torch.Tensor,
        steps: slice = slice(None),
        last: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The selective scan from a zero state over the time steps ``steps`` of u, delta, z
        [B, E, T] and B, C [B, N, T] -> y [B, E, steps] (and the last state if ``last``)."""
        return selective_scan(
            u[:, :, steps],
            delta[:, :, steps],
            A,
            B[:, :, steps],
            C[:, :, steps],
            D=self.D,
            z=z[:, :, steps],
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=last,
            backend=self.backend,
        )

    def _carry(
        self, h0: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, C: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What a prefill from the state h0 [B, E, N] adds to a scan started from zero.

        The recurrence is linear in h, so starting from h0 adds h0 decayed by the steps so far,
        exp(A · Σ_{s≤t} dt_s) ⊙ h0, to every state; selective_scan takes no initial state, so
        that term is added here. delta: [B, E, T]; C: [B, N, T]; z: [B, E, T].
        Returns the added output [B, E, T] and the added final state [B, E, N], in h0's dtype.
        """
        dtype = h0.dtype
        dt = F.softplus(delta.to(dtype) + self.dt_proj.bias.to(dtype)[:, None])
        elapsed = _cumsum(dt)  # ≥ 0, so A · elapsed ≤ 0: the exponentials cannot overflow
        A_c, C_c = A.to(dtype), C.to(dtype)
        parts = []
        for span, C_blk in zip(elapsed.split(_CARRY_BLOCK, -1), C_c.split(_CARRY_BLOCK, -1), strict=True):
            decay = torch.exp(span[:, :, None, :] * A_c[None, :, :, None])  # [B, E, N, steps]
            parts.append(torch.einsum("bens,ben,bns->bes", decay, h0, C_blk))
        y = torch.cat(parts, dim=-1) * F.silu(z.to(dtype))
        return y, torch.exp(elapsed[:, :, -1:] * A_c) * h0
