"""Input validation shared by the gated-delta-rule dispatchers and twins.

``check_inputs`` looks only at shapes, dtypes and devices, so it never synchronises with
the device. The values of ``cu_seqlens`` are checked by ``sequence_bounds`` at the point
where a PyTorch twin reads them to the host anyway; a device kernel has to check them on
the device instead, or it would pay a host sync per call.
"""

from __future__ import annotations

import itertools
import numbers
from typing import NoReturn

import torch

from memlab.kernels.backend import KernelInputError
from memlab.kernels.limits import MAX_HEAD_DIM, check_size

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(op: str, message: str) -> NoReturn:
    raise KernelInputError(f"{op}: {message}")


def check_inputs(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> None:
    """Raise KernelInputError naming the first argument that the op cannot take.

    Expected: q, k [B, T, H, K] and v [B, T, H, V] of one float dtype; g, beta [B, T, H]
    of any float dtype; K, V <= 256; initial_state [N, H, K, V] float; cu_seqlens int32 or
    int64 [N + 1] with B == 1 (N = B without it); every tensor on q's device.
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    if initial_state is not None:
        named["initial_state"] = initial_state
    if cu_seqlens is not None:
        named["cu_seqlens"] = cu_seqlens
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            _fail(op, f"{name} must be a torch.Tensor, got {type(x).__name__}")
    for name, x in named.items():
        if x.device != q.device:
            _fail(op, f"{name} is on {x.device} but q is on {q.device}; put every input on one device")

    if q.dim() != 4:
        _fail(op, f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        _fail(op, f"k has shape {tuple(k.shape)} but q has {tuple(q.shape)}; both must be [B, T, H, K]")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        _fail(op, f"v must be [B, T, H, V] = [{B}, {T}, {H}, V] to match q, got shape {tuple(v.shape)}")
    V = v.shape[3]
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != q.shape[:3]:
            _fail(op, f"{name} must be [B, T, H] = [{B}, {T}, {H}] to match q, got shape {tuple(x.shape)}")
    check_size(op, "K", K, MAX_HEAD_DIM, "head dim of q and k")
    check_size(op, "V", V, MAX_HEAD_DIM, "head dim of v")

    for name in ("q", "k", "v", "g", "beta", "initial_state"):
        if name in named and named[name].dtype not in _FLOAT_DTYPES:
            _fail(op, f"{name} must be a float tensor (fp16, bf16, fp32, fp64), got {named[name].dtype}")
    if not q.dtype == k.dtype == v.dtype:
        _fail(op, f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        _fail(op, f"scale must be a number or None, got {type(scale).__name__}")

    N = B
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            _fail(op, f"cu_seqlens must be 1-D [N + 1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            _fail(op, f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if B != 1:
            _fail(op, f"cu_seqlens packs sequences along T, so the batch size must be 1, got B={B}")
        N = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        what = "number of sequences in cu_seqlens" if cu_seqlens is not None else "batch size"
        _fail(
            op,
            f"initial_state must be [N, H, K, V] = [{N}, {H}, {K}, {V}] (N = {what}), "
            f"got shape {tuple(initial_state.shape)}",
        )


def sequence_bounds(op: str, cu_seqlens: torch.Tensor, T: int) -> list[tuple[int, int]]:
    """Read cu_seqlens [N + 1] to the host and return the N (start, end) pairs along T.

    Raises KernelInputError unless it starts at 0, never decreases and ends at T. Empty
    sequences (equal neighbours) are allowed.
    """
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        _fail(op, f"cu_seqlens must start at 0, got {offsets[0]}")
    for i, (a, b) in enumerate(itertools.pairwise(offsets)):
        if b < a:
            _fail(op, f"cu_seqlens must be non-decreasing, got cu_seqlens[{i}]={a} > cu_seqlens[{i + 1}]={b}")
    if offsets[-1] != T:
        _fail(op, f"cu_seqlens must end at T={T} (the packed length of q), got {offsets[-1]}")
    return list(itertools.pairwise(offsets))
