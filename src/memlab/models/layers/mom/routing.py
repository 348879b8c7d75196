"""MoM's router: each token's top-k of the E routed memories, the shared memory as one more
visit, and the load-balancing loss of the paper (arXiv 2502.13685)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Routing:
    """Which memories the tokens of x [B, T, D] read and write, and with what weights.

    probs: [B, T, E] router probabilities (compute dtype); None when E == 1.
    routed: [B, T, E] int64 0/1, the top-k routing mask.
    visited: [B, T, M] int64 0/1, the memories each token visits, the shared one included.
    chosen: [B, T, S] int64, the S = k + shared memories each token visits.
    weights: [B, T, S] compute dtype, their mixing weights (the shared memory's is 1).
    """

    probs: torch.Tensor | None
    routed: torch.Tensor
    visited: torch.Tensor
    chosen: torch.Tensor
    weights: torch.Tensor


def route(
    x: torch.Tensor,
    router: nn.Linear | None,
    num_memories: int,
    topk: int,
    shared_mem: bool,
    compute: torch.dtype,
) -> Routing:
    """Top-k routing of x [B, T, D] by ``router`` (None with one memory: a softmax over a single
    logit is constant); weights w_t = top-k probabilities renormalised to sum to 1."""
    B, T, _ = x.shape
    if router is None:
        probs = None
        chosen = torch.zeros(B, T, 1, dtype=torch.long, device=x.device)
        weights = torch.ones(B, T, 1, dtype=compute, device=x.device)
    else:
        # in fp32 even under autocast: bf16 logits round near-ties differently depending on
        # the matmul's shape, so the packed and padded layouts could route a token apart
        with torch.autocast(x.device.type, enabled=False):
            probs = _RouterLogits.apply(x, router.weight, compute).softmax(-1)
        top, chosen = probs.topk(topk, dim=-1)
        weights = top / top.sum(-1, keepdim=True)
    if shared_mem:
        chosen = torch.cat([chosen, chosen.new_full((B, T, 1), num_memories)], dim=2)
        weights = torch.cat([weights, weights.new_ones(B, T, 1)], dim=2)
    # A scatter rather than F.one_hot, which checks index ranges on the host for CPU tensors.
    # The shared column comes from the same scatter, not a cat with ones: inductor (torch 2.11)
    # fuses such a cat's index test into the layouts' cumsum, and its split-scan codegen fails.
    M = num_memories + int(shared_mem)
    visited = torch.zeros(B, T, M, dtype=torch.long, device=x.device).scatter_(2, chosen, 1)
    return Routing(probs, visited[..., :num_memories], visited, chosen, weights)


class _RouterLogits(torch.autograd.Function):
    """x [B, T, D] @ weight [E, D]ᵀ in ``compute`` dtype -> logits [B, T, E], keeping x for
    the backward as it came (the layer's autocast input, bf16 under autocast, already kept for
    its projections) rather than the fp32 copy a plain F.linear would keep. The gradients are
    computed in ``compute`` dtype and returned in x's and the weight's dtypes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x.to(compute), weight.to(compute))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        dx = dw = None
        with torch.autocast(grad.device.type, enabled=False):  # a captured backward runs under it
            if ctx.needs_input_grad[0]:
                dx = (grad @ weight.to(grad.dtype)).to(x.dtype)
            if ctx.needs_input_grad[1]:
                dw = (grad.flatten(0, -2).T @ x.flatten(0, -2).to(grad.dtype)).to(weight.dtype)
        return dx, dw, None


def load_balance(
    routing: Routing, topk: int, aux_loss_weight: float, token_mask: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Load-balancing loss and per-memory loads over the real tokens (token_mask bool [B, T];
    None: all of them), as a mixer's (aux_losses, stats); both empty with one memory.

    f_e = share of the k routed slots per token that went to memory e (Σ_e f_e = 1);
    P_e = mean router probability of e; L_aux = E · Σ_e f_e · P_e, weighted by λ.
    """
    probs = routing.probs
    if probs is None:
        return {}, {}
    E = probs.shape[-1]
    if token_mask is None:
        token_mask = torch.ones(probs.shape[:2], dtype=torch.bool, device=probs.device)
    real = token_mask[..., None].to(probs.dtype)
    tokens = real.sum().clamp_min(1.0)
    load = (routing.routed * real).sum((0, 1)) / (tokens * topk)
    importance = (probs * real).sum((0, 1)) / tokens
    aux = {}
    if aux_loss_weight > 0:
        aux["router_balance"] = aux_loss_weight * E * (load * importance).sum()
    return aux, {"router_load": load.detach()}
