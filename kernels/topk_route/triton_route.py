"""Triton implementation of ``topk_route`` (the "triton" backend): one program per token
computes its E logits over D in tiles, the softmax, and the top-k by k rounds of argmax (the
lowest index wins a tie, as torch.topk's order is not defined there), in one launch where the
PyTorch twin takes about fifteen."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Router elements per iteration over D: one load covers a 340M model's whole [4, 1024] router,
# since a token's program is latency-bound, one dependent load after another.
TILE_ELEMENTS = 4096


@triton.jit
def _topk_route_kernel(
    x, router, weights, visited, stride_x, D, E,
    M: tl.constexpr, TOPK: tl.constexpr, SHARED: tl.constexpr, BE: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    i_n = tl.program_id(0)
    o_e = tl.arange(0, BE)
    m_e = o_e < E
    logits = tl.zeros([BE], dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < D
        b_x = tl.load(x + i_n.to(tl.int64) * stride_x + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_w = tl.load(router + o_e[:, None] * D + o_d[None, :], mask=m_e[:, None] & m_d[None, :], other=0.0)
        logits += tl.sum(b_w.to(tl.float32) * b_x[None, :], 1)
    logits = tl.where(m_e, logits, float("-inf"))
    p = tl.exp(logits - tl.max(logits, 0))
    p = p / tl.sum(p, 0)
    # k rounds of argmax; a taken or padded slot holds -1 (below any probability, 0 included)
    left = tl.where(m_e, p, -1.0)
    chosen = o_e < 0
    total = 0.0
    for _ in tl.static_range(TOPK):
        best = tl.max(left, 0)
        first = tl.min(tl.where(left == best, o_e, BE), 0)
        chosen = chosen | (o_e == first)
        total += best
        left = tl.where(o_e == first, -1.0, left)
    w = tl.where(chosen, p / total, 0.0)
    tl.store(weights + i_n * M + o_e, w, mask=m_e)
    tl.store(visited + i_n * M + o_e, chosen.to(tl.uint8), mask=m_e)
    if SHARED:
        tl.store(weights + i_n * M + E, 1.0)
        tl.store(visited + i_n * M + E, 1)


def topk_route_triton(
    x: torch.Tensor, router: torch.Tensor, topk: int, shared_mem: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Arguments as ``topk_route`` (which checks them)."""
    N, D = x.shape
    E = router.shape[0]
    M = E + int(shared_mem)
    if x.stride(-1) != 1:
        x = x.contiguous()
    weights = torch.empty(N, M, dtype=torch.float32, device=x.device)
    visited = torch.empty(N, M, dtype=torch.bool, device=x.device)
    BE = max(triton.next_power_of_2(E), 2)
    if N:
        _topk_route_kernel[(N,)](
            x, router.contiguous(), weights, visited.view(torch.uint8), x.stride(0), D, E,
            M=M, TOPK=topk, SHARED=shared_mem, BE=BE, BD=min(TILE_ELEMENTS // BE, triton.next_power_of_2(D)),
        )  # fmt: skip
    return weights, visited
