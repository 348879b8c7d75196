"""Elementwise Triton functions shared by several kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + e^x) without overflow, and accurate for very negative x (where 1 + e^x rounds
    to 1 and a plain log would return 0): log1p(w) = log(1 + w)·w / ((1 + w) − 1)."""
    w = tl.exp(-tl.abs(x))
    v = 1.0 + w
    exact = v == 1.0
    log1p_w = tl.where(exact, w, tl.log(v) * w / tl.where(exact, 1.0, v - 1.0))
    return tl.maximum(x, 0.0) + log1p_w
