"""Backend selection shared by every op: "auto" | "triton" | "torch".

The default comes from the environment variable ``MEMLAB_KERNEL_BACKEND``, else "auto":
Triton on CUDA tensors (for ops that have a Triton kernel), PyTorch otherwise. "triton" on
CPU tensors runs the kernels under Triton's interpreter, which must be switched on with
``TRITON_INTERPRET=1`` before Triton is imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "MEMLAB_KERNEL_BACKEND"
# Triton is a Linux-only dependency: without it every backend resolves to the PyTorch twins
# (and an explicit backend="triton" is refused). Kernel modules import Triton, so each op
# imports its kernels only when a call runs them.
HAS_TRITON = importlib.util.find_spec("triton") is not None


class KernelInputError(ValueError):
    """A kernel was called with inputs it cannot take (shape, dtype, device, backend)."""


def opaque(op: Callable) -> Callable:
    """``op`` as one opaque call to ``torch.compile`` (a graph break around it): the compiler
    neither traces its checks and Triton launches nor rewrites a PyTorch twin; the code around
    it compiles. For the ops without custom ops and for the twins; the ops whose Triton path
    is a custom op (``kernels/<op>/library.py``) are traced whole, without a break."""
    return torch.compiler.disable(op, recursive=True)


def resolve_backend(backend: str | None, x: torch.Tensor, op: str, has_triton: bool) -> str:
    """Return "triton" or "torch" for an op called on tensor ``x``.

    Raises KernelInputError for an unknown backend name, for "triton" when the op has no
    Triton kernel, and for "triton" on CPU tensors without ``TRITON_INTERPRET=1``.
    """
    choice = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if choice not in BACKENDS:
        source = "backend=" if backend is not None else f"${ENV_VAR}="
        raise KernelInputError(f"{op}: unknown {source}{choice!r}; expected one of {', '.join(BACKENDS)}")
    if choice == "auto":
        return "triton" if (x.is_cuda and has_triton) else "torch"
    if choice == "triton":
        if not has_triton:
            raise KernelInputError(f"{op}: no Triton kernel is available for this op; use backend='torch'")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise KernelInputError(
                f"{op}: backend='triton' on {x.device} tensors needs TRITON_INTERPRET=1 "
                "set before Triton is imported"
            )
    return choice


def resolve_fp32_backend(backend: str | None, x: torch.Tensor, op: str, tensors: tuple) -> str:
    """resolve_backend for an op whose Triton kernels compute in fp32: float64 inputs (any of
    ``tensors``, None entries skipped) run the PyTorch twin under "auto" and are refused under
    an explicit "triton"."""
    choice = resolve_backend(backend, x, op, has_triton=HAS_TRITON)
    if choice == "triton" and any(t is not None and t.dtype == torch.float64 for t in tensors):
        if (backend if backend is not None else os.environ.get(ENV_VAR, "auto")) == "auto":
            return "torch"
        raise KernelInputError(
            f"{op}: the Triton kernels compute in float32; float64 inputs need backend='torch'"
        )
    return choice


def refuse_grad(op: str, named: dict[str, torch.Tensor | None], remedy: str = "") -> None:
    """Raise KernelInputError when grad is enabled and a named input requires grad: a forward-only
    (decoding) op refuses rather than silently dropping the gradient. ``remedy`` is appended."""
    needs = [name for name, t in named.items() if t is not None and t.requires_grad]
    if needs and torch.is_grad_enabled():
        raise KernelInputError(
            f"{op}: a decoding step has no backward, but {', '.join(needs)} require grad; "
            f"call it under torch.no_grad(){remedy}"
        )
