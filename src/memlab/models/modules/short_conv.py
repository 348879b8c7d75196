"""Short causal depthwise convolution (width 4, SiLU), the local mixing in front of linear-attention q/k/v.

y_t = silu(Σ_{s=0}^{W−1} w_{W−1−s} · x_{t−s}) per channel. A cache holds the last W−1 inputs
(the "tail") so that decoding continues a sequence exactly, in constant memory. Whole
sequences go through the ``causal_conv1d`` kernel; a cache is continued here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memlab.kernels import causal_conv1d


class ShortConvolution(nn.Module):
    """Causal depthwise conv1d over [B, T, C] followed by SiLU; no bias.

    Args:
        channels: C.
        kernel_size: W, the number of taps (the current token and W−1 before it).
        backend: kernel backend of the whole-sequence form (see ``causal_conv1d``).

    The weight is [C, W] in the model dtype; tap W−1 multiplies the current token.
    """

    def __init__(self, channels: int, kernel_size: int = 4, backend: str | None = None) -> None:
        super().__init__()
        self.channels, self.kernel_size, self.backend = channels, kernel_size, backend
        # nn.Conv1d's default initialisation for a depthwise conv (fan-in = kernel_size).
        bound = 1.0 / math.sqrt(kernel_size)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))

    def init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """An empty tail (no left context): zeros [batch_size, C, W−1]."""
        return torch.zeros(batch_size, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        cache: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-sequence form.

        Args:
            x: [B, T, C].
            cache: [B, C, W−1] inputs preceding x (same dtype), or None for a fresh start.
            lengths: int [B], the number of real tokens at the front of each row (the rest is
                padding); only where the new tail is read from. Default: all T.
            cu_seqlens: int [N+1] offsets of documents packed along T (B == 1); no tap reads
                across a document boundary. Not combinable with a cache.

        Returns:
            y [B, T, C] in x's dtype, and the new tail [B, C, W−1] (the last W−1 real inputs,
            reaching into the old tail where a row is shorter than W−1) if a cache was given,
            else None.
        """
        if cu_seqlens is not None and cache is not None:
            raise ValueError("ShortConvolution: cu_seqlens and a cache cannot be combined")
        if cache is None:
            return causal_conv1d(x, self.weight, cu_seqlens=cu_seqlens, backend=self.backend), None
        return continue_conv(x, cache, self.weight, lengths=lengths)

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-token decode form. x: [B, C]; cache: [B, C, W−1] -> (y [B, C], new cache [B, C, W−1])."""
        return conv_step(x, cache, self.weight)


def continue_conv(
    x: torch.Tensor,
    cache: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(causal depthwise conv (+ bias)) of x [B, T, C] continuing the inputs ``cache``
    [B, C, W−1] (the cache form of ``ShortConvolution`` and of Mamba's conv). weight: [C, W], tap
    W−1 on the current token; bias: [C] or None; lengths: int [B] real tokens at the front of
    each row, where the new tail is read from (default all T).

    Returns y [B, T, C] and the new tail [B, C, W−1] (the last W−1 real inputs, reaching into the
    old tail where a row is shorter than W−1), both in x's dtype; the tail never keeps a prefill's
    [B, C, W−1+T] buffer alive.
    """
    if x.shape[1] == 1:
        y, new_cache = conv_step(x[:, 0], cache, weight, bias)
        if lengths is not None:
            new_cache = torch.where(lengths[:, None, None] > 0, new_cache, cache)
        return y[:, None], new_cache

    B, T, C = x.shape
    extended = torch.cat([cache, x.transpose(1, 2)], dim=2)  # [B, C, W−1+T]
    y = F.silu(F.conv1d(extended, weight[:, None], bias, groups=C)).transpose(1, 2)
    end = torch.full((B,), T, device=x.device) if lengths is None else lengths.long()
    # Tail = extended[:, :, end + j] for j < W−1, where end counts the real tokens of the row.
    index = end[:, None] + torch.arange(weight.shape[1] - 1, device=x.device)
    return y, extended.gather(2, index[:, None, :].expand(B, C, -1))


def conv_step(
    x: torch.Tensor, cache: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``continue_conv`` for one token: x [B, C] -> (y [B, C], new cache [B, C, W−1]). A weighted
    sum over the window: on the CPU, F.conv1d's fixed cost per call is far above the sum's."""
    window = torch.cat([cache, x[:, :, None]], dim=2)  # [B, C, W]
    pre = (window * weight).sum(-1)
    if bias is not None:
        pre = pre + bias
    return F.silu(pre), window[:, :, 1:]
