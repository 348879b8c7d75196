"""The projections of a decoding step: F.linear, or the GEMV kernel where it is faster."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels import gemv
from memlab.kernels.backend import HAS_TRITON, resolve_backend
from memlab.models.modules.autocast_input import autocast_dtype

# Up to this many rows (sequences decoding together) the GEMV kernel runs; above, the GEMM
# library's kernels, which read the weight once for all rows too. 0, the default, turns it
# off: the kernel passes its conformance cases under Triton's interpreter and compiles for
# sm_90, but has not yet been checked and timed on a GPU; 4 is the intended setting.
GEMV_ROWS = 0


def step_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K] and weight [N, K] -> [..., N].

    With at most GEMV_ROWS rows (none by default), gradients off, on CUDA, and the weight
    already in the 16-bit dtype the product runs in (x's, or the autocast dtype), it runs
    ``gemv``, which reads the weight at the memory bandwidth where the GEMM library's
    small-batch kernels reach about a third of it (``backend``: the kernel backend of the
    calling layer; "torch" keeps F.linear)."""
    rows = x.numel() // max(1, x.shape[-1])
    dtype = autocast_dtype(x)
    if (
        x.is_cuda
        and 1 <= rows <= GEMV_ROWS
        and dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == dtype
        and (bias is None or bias.dtype == dtype)
        and not torch.is_grad_enabled()
        and resolve_backend(backend, x, "gemv", has_triton=HAS_TRITON) == "triton"
    ):
        y = gemv(x.reshape(rows, x.shape[-1]).to(dtype), weight, backend="triton").view(*x.shape[:-1], -1)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)
