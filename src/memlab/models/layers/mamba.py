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

import torch
import torch.nn.functional as F
from torch import nn

from memlab.errors import ConfigError
from memlab.kernels.backend import BACKENDS
from memlab.kernels.causal_conv1d import causal_conv1d
from memlab.kernels.limits import MAX_CONV_WIDTH, MAX_STATE_SIZE
from memlab.kernels.selective_scan import selective_scan, selective_state_update
from memlab.models.layers.config_types import require_types
from memlab.models.mixer import MixerOutput
from memlab.models.modules.init import inverse_softplus, log_uniform_steps
from memlab.models.modules.varlen import check_packed, document_bounds

# Time steps per block when a prefill adds the decayed starting state to its outputs: bounds
# the [B, E, N, steps] decay tensor that this needs, whatever the prompt length.
_CARRY_BLOCK = 256


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
        d_state: N, the state size per inner channel.
        d_conv: width of the causal depthwise convolution.
        expand: E = expand · D inner channels (must be a whole number).
        dt_rank: rank of the dt projection, or "auto" for ceil(D / 16).
        dt_min, dt_max: range of the initial step sizes dt, sampled log-uniformly per channel.
        dt_init_floor: lower clamp on those sampled step sizes.
        conv_bias: give the convolution a bias.
        bias: give in_proj and out_proj biases.
        backend: kernel backend, None (from $MEMLAB_KERNEL_BACKEND) | "auto" | "triton" | "torch".

    Parameters: in_proj [2E, D], conv1d (weight [E, 1, d_conv], bias [E]), x_proj
    [dt_rank + 2N, E], dt_proj (weight [E, dt_rank], bias [E]), A_log [E, N], D [E],
    out_proj [D, E]. A_log and D are flagged ``_no_weight_decay``.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
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
        _check_config(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init_floor, backend)
        self.layer_idx = layer_idx
        self.d_state, self.d_conv, self.backend = d_state, d_conv, backend
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        E, N, R = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        # Only the parameters are used (by causal_conv1d, and with a cache tail in front by
        # _conv); nn.Conv1d keeps the checkpoint layout and its default init.
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        with torch.no_grad():
            # dt_proj·dt_low starts at unit scale, so that the bias alone sets the initial
            # step sizes: log-uniform in [dt_min, dt_max], i.e. memories from ~1/dt_max to
            # ~1/dt_min tokens. The bias stores softplus⁻¹(dt) = dt + log(1 − e^−dt).
            self.dt_proj.weight.uniform_(-(R**-0.5), R**-0.5)
            self.dt_proj.bias.copy_(inverse_softplus(log_uniform_steps(E, dt_min, dt_max, dt_init_floor)))
        # S4D-real: channel-independent decay rates 1..N on the state dims.
        self.A_log = nn.Parameter(torch.arange(1, N + 1, dtype=torch.float32).log().repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # decay rates and a skip gain, not weights

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """An empty cache: a zero conv tail (``dtype``) and a zero SSM state (fp32, fp64 for fp64)."""
        state_dtype = torch.promote_types(dtype, torch.float32)
        return MambaState(
            conv_tail=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype),
        )

    def forward(
        self, x: torch.Tensor, state: MambaState | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> MixerOutput:
        """x: [B, T, D]; state: from ``init_state``, continued and updated in place (T == 1 is a
        decoding step, longer T a prefill); cu_seqlens: int [N+1] packed documents (B == 1, no
        state), across whose boundaries neither the conv nor the scan carries anything.

        Returns hidden [B, T, D] in x's dtype, no aux losses or stats.
        """
        B, T, _ = x.shape
        bounds = None
        check_packed("Mamba", B, cu_seqlens, state)
        if cu_seqlens is not None:
            # Documents are run one by one, which needs their bounds on the host: the only sync
            # of the layer. A varlen scan taking cu_seqlens on the device would remove it.
            bounds = [(s, e) for s, e in document_bounds("Mamba", cu_seqlens, T) if e > s]

        # Activations stay [B, T, channels] from in_proj to out_proj: the scan reads its
        # [B, E, T] inputs as transposed views of them (z, every other E-wide row of in_proj's
        # output, is copied once to that layout), so no layer-sized transposing copy.
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, E] each
        if state is None:
            u = causal_conv1d(
                x_in, self.conv1d.weight[:, 0], self.conv1d.bias, cu_seqlens, "silu", self.backend
            )
        else:
            u, conv_tail = self._conv(x_in, state.conv_tail)
        dt_low, B_ssm, C_ssm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, self.dt_proj.weight)  # bias added in the scan
        # [B, E, T] and [B, N, T] views
        u, delta, z, B_ssm, C_ssm = (t.transpose(1, 2) for t in (u, delta, z, B_ssm, C_ssm))
        # A = −exp(A_log) in at least fp32 even in a bf16 model: the decays exp(dt·A) are
        # sensitive to it over long contexts.
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

        def scan(sl: slice, last: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            return selective_scan(
                u[:, :, sl],
                delta[:, :, sl],
                A,
                B_ssm[:, :, sl],
                C_ssm[:, :, sl],
                D=self.D,
                z=z[:, :, sl],
                delta_bias=self.dt_proj.bias,
                delta_softplus=True,
                return_last_state=last,
                backend=self.backend,
            )

        if bounds is not None:
            # joined along time in [B, T, E], the layout out_proj reads
            y = torch.cat([scan(slice(s, e)).transpose(1, 2) for s, e in bounds], dim=1).transpose(1, 2)
        elif state is None:
            y = scan(slice(None))
        elif T == 1:
            y = selective_state_update(
                state.ssm,
                u[:, :, 0],
                delta[:, :, 0],
                A,
                B_ssm[:, :, 0],
                C_ssm[:, :, 0],
                D=self.D,
                z=z[:, :, 0],
                dt_bias=self.dt_proj.bias,
                dt_softplus=True,
                backend=self.backend,
            )[:, :, None]
            state.conv_tail = conv_tail
        else:
            y, last = scan(slice(None), last=True)
            y_carry, h_carry = self._carry(state.ssm, delta, A, C_ssm, z)
            y = y + y_carry.to(y.dtype)
            state.ssm, state.conv_tail = last + h_carry, conv_tail
        return MixerOutput(self.out_proj(y.transpose(1, 2)))

    def _conv(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """silu(causal depthwise conv + bias) of x [B, T, E] preceded by a cache's ``tail``
        [B, E, W−1]. Returns y [B, T, E] and the new tail [B, E, W−1], both in x's dtype."""
        W = self.d_conv
        extended = torch.cat([tail, x.transpose(1, 2)], dim=2)
        if x.shape[1] == 1:
            # One token (a decoding step): a weighted sum over the window. On CPU, F.conv1d's
            # fixed cost per call is far above the sum's (milliseconds for fp32, more for fp64).
            pre = (extended * self.conv1d.weight[:, 0]).sum(-1, keepdim=True)
            if self.conv1d.bias is not None:
                pre = pre + self.conv1d.bias[:, None]
        else:
            pre = F.conv1d(extended, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        # The tail is copied: a view would keep the whole prefill buffer alive in the cache.
        return F.silu(pre).transpose(1, 2), extended[:, :, extended.shape[2] - (W - 1) :].clone()

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
        elapsed = dt.cumsum(-1)  # ≥ 0, so A · elapsed ≤ 0: the exponentials cannot overflow
        A_c, C_c = A.to(dtype), C.to(dtype)
        parts = []
        for span, C_blk in zip(elapsed.split(_CARRY_BLOCK, -1), C_c.split(_CARRY_BLOCK, -1), strict=True):
            decay = torch.exp(span[:, :, None, :] * A_c[None, :, :, None])  # [B, E, N, steps]
            parts.append(torch.einsum("bens,ben,bns->bes", decay, h0, C_blk))
        y = torch.cat(parts, dim=-1) * F.silu(z.to(dtype))
        return y, torch.exp(elapsed[:, :, -1:] * A_c) * h0


def _check_config(
    d_model: int,
    d_state: int,
    d_conv: int,
    expand: float,
    dt_rank: int | str,
    dt_min: float,
    dt_max: float,
    dt_init_floor: float,
    backend: str | None,
) -> None:
    """Raise ConfigError naming the first invalid ``model.mixer.*`` key."""
    require_types(
        {"d_state": d_state, "d_conv": d_conv},
        {"expand": expand, "dt_min": dt_min, "dt_max": dt_max, "dt_init_floor": dt_init_floor},
    )
    if not 1 <= d_state <= MAX_STATE_SIZE:
        raise ConfigError(f"model.mixer.d_state must be in 1..{MAX_STATE_SIZE} (got {d_state})")
    if not 1 <= d_conv <= MAX_CONV_WIDTH:
        raise ConfigError(f"model.mixer.d_conv must be in 1..{MAX_CONV_WIDTH} (got {d_conv})")
    inner = expand * d_model
    if expand <= 0 or inner != int(inner):
        raise ConfigError(
            f"model.mixer.expand must be > 0 and make expand · d_model a whole number "
            f"(got {expand} · {d_model} = {inner})"
        )
    if dt_rank != "auto" and (isinstance(dt_rank, str) or dt_rank != int(dt_rank) or dt_rank < 1):
        raise ConfigError(f"model.mixer.dt_rank must be 'auto' or an integer >= 1 (got {dt_rank!r})")
    if not 0 < dt_min < dt_max:
        raise ConfigError(
            f"model.mixer.dt_min and model.mixer.dt_max must satisfy 0 < dt_min < dt_max "
            f"(got dt_min={dt_min}, dt_max={dt_max})"
        )
    if dt_init_floor < 0:
        raise ConfigError(f"model.mixer.dt_init_floor must be >= 0 (got {dt_init_floor})")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(
            f"model.mixer.backend must be null or one of {', '.join(BACKENDS)} (got {backend!r})"
        )
