"""Backend selection shared by every op: "auto" | "triton" | "torch".

The default comes from the environment variable ``MEMLAB_KERNEL_BACKEND``, else "auto":
Triton on CUDA tensors (for ops that have a Triton kernel), PyTorch otherwise. "triton" on
CPU tensors runs the kernels under Triton's interpreter, which must be switched on with
``TRITON_INTERPRET=1`` before Triton is imported.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "MEMLAB_KERNEL_BACKEND"


class KernelInputError(ValueError):
    """A kernel was called with inputs it cannot take (shape, dtype, device, backend)."""


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
