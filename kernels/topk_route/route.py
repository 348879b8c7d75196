"""Public top-k routing of tokens: input checks, backend choice, dispatch, and the PyTorch twin."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError, opaque, refuse_grad, resolve_fp32_backend
from memlab.kernels.limits import MAX_ROUTED_MEMORIES, check_size

OP = "topk_route"


def topk_route_torch(
    x: torch.Tensor, router: torch.Tensor, topk: int, shared_mem: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch twin (and, in fp64, the reference); arguments as ``topk_route``."""
    compute = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):  # fp32 logits under autocast too
        probs = F.linear(x.to(compute), router.to(compute)).softmax(-1)
    top, chosen = probs.topk(topk, dim=-1)
    weights = torch.zeros_like(probs).scatter_(1, chosen, top / top.sum(-1, keepdim=True))
    visited = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, chosen, True)
    if shared_mem:
        weights = F.pad(weights, (0, 1), value=1.0)
        visited = F.pad(visited, (0, 1), value=True)
    return weights, visited


# torch.compile traces the op's checks and its Triton path (a custom op: library.py); the twin
# stays a graph break, as it always was
_topk_route_twin = opaque(topk_route_torch)


def topk_route(
    x: torch.Tensor, router: torch.Tensor, topk: int, shared_mem: bool, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route each token to its top-k of E memories, plus the shared one; forward only.

    p = softmax(x Wᵀ) in fp32 (whatever the inputs' dtype); the k largest p_e, renormalised to
    sum to 1, are the chosen memories' weights, the others' 0; the shared memory (appended as
    memory E when ``shared_mem``) has weight 1. A chosen memory whose probability underflows
    to 0 is still visited.

    Args:
        x: [N, D] float, the tokens (any strides).
        router: [E, D] float, the router's weight (E <= 64).
        topk: memories per token, 1 <= topk <= E.
        shared_mem: append the always-visited shared memory.
        backend: "auto" | "triton" | "torch" (see memlab.kernels.backend).

    Returns:
        weights [N, M] fp32 (fp64 for fp64 inputs) and visited bool [N, M], M = E + shared_mem.

    Raises:
        KernelInputError: for inputs the op cannot take, or an input that requires grad while
            grad is enabled (routing a decoding step has no backward).
    """
    for name, t in (("x", x), ("router", router)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise KernelInputError(f"{OP}: {name} must be a 2-D floating-point torch.Tensor, got {t!r:.60}")
    E, D = router.shape
    if D < 1:
        raise KernelInputError(f"{OP}: the tokens must have at least one feature, got D={D}")
    if x.shape[1] != D:
        raise KernelInputError(f"{OP}: x must be [N, {D}] for router [{E}, {D}], got {list(x.shape)}")
    if x.device != router.device:
        raise KernelInputError(f"{OP}: x is on {x.device} but router is on {router.device}")
    check_size(OP, "E", E, MAX_ROUTED_MEMORIES, "routed memories")
    check_size(OP, "topk", topk, E, "memories per token")
    refuse_grad(OP, {"x": x, "router": router})
    if resolve_fp32_backend(backend, x, OP, (x, router)) == "triton":
        from memlab.kernels.topk_route.library import topk_route_op
        from memlab.kernels.topk_route.triton_route import topk_route_triton

        if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
            return topk_route_op(x, router, topk, shared_mem)
        return topk_route_triton(x, router, topk, shared_mem)
    return _topk_route_twin(x, router, topk, shared_mem)
