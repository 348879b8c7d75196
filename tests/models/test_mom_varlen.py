"""MoM's packed layout (one variable-length kernel launch per layer) against the padded one.

The layout itself (time order inside every (sequence, memory) segment, empty segments, the
inverse permutation) and the two per-memory projections are checked in the normal run. The
layer on the Triton backend, which takes the packed layout, is checked against the same layer
on the PyTorch twin, which takes the padded one: outputs, loads and the gradients of the input
and of every parameter, in fp32. Those are marked ``interpreted``: they run under
Triton's interpreter, started by ``test_packed_layer_under_interpreter`` (see tests/interpreter.py).
"""

from __future__ import annotations

import zlib

import pytest
import torch

from memlab.kernels import chunk_gated_delta_rule
from memlab.models.layers import MoMAttention
from memlab.models.layers.mom import packed, padded
from memlab.models.layers.mom.dispatch import packed_layout, padded_layout, project_packed
from tests.interpreter import interpreted, run_under_interpreter

D, K = 24, 16


@pytest.fixture(autouse=True)
def _fresh_seed(request, monkeypatch):
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def random_routing(B: int, T: int, M: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visited [B, T, M], chosen [B, T, S]): S distinct memories per token, memory M − 1
    never chosen when S < M − 1 so that its segments are empty."""
    pool = M - 1 if S < M - 1 else M
    chosen = torch.rand(B, T, pool).argsort(-1)[..., :S]
    visited = torch.zeros(B, T, M, dtype=torch.long).scatter_(2, chosen, 1)
    return visited, chosen


@pytest.mark.parametrize(("B", "T", "M", "S"), [(1, 1, 1, 1), (2, 17, 4, 2), (3, 9, 5, 3)])
def test_packed_layout_keeps_time_order_in_every_segment(B: int, T: int, M: int, S: int) -> None:
    visited, chosen = random_routing(B, T, M, S)
    sequence = torch.arange(B * T) // T
    starts = torch.arange(B) * T
    seg = packed_layout(visited.view(B * T, M), chosen.view(B * T, S), sequence, starts, starts + T)
    N = B * T * S
    assert sorted(seg.destination.flatten().tolist()) == list(range(N))
    assert torch.equal(seg.source[seg.destination], torch.arange(B * T)[:, None].expand(B * T, S))
    assert torch.equal(seg.memory[seg.destination], chosen.view(B * T, S))
    offsets = seg.cu_seqlens.tolist()
    for m in range(M):
        for b in range(B):
            start, end = offsets[m * B + b], offsets[m * B + b + 1]
            expected = [b * T + t for t in range(T) if visited[b, t, m]]
            assert seg.source[start:end].tolist() == expected  # time order, this sequence only
            assert seg.memory[start:end].tolist() == [m] * len(expected)
        assert seg.memory_ends[m].item() == offsets[(m + 1) * B]
    if S < M - 1:
        assert all(offsets[(M - 1) * B + b] == offsets[(M - 1) * B + b + 1] for b in range(B))

    destination, counts = padded_layout(visited, chosen)
    assert torch.equal(counts.T.flatten(), seg.cu_seqlens.diff())
    # The same slot inside a segment in both layouts.
    slot = destination % T
    assert torch.equal(
        slot.view(B * T, S), seg.destination - seg.cu_seqlens[chosen.view(B * T, S) * B + sequence[:, None]]
    )


def test_packed_layout_of_documents_with_an_empty_one() -> None:
    T, M, S = 11, 3, 2
    visited, chosen = random_routing(1, T, M, S)
    cu = torch.tensor([0, 4, 4, 11])
    sequence = torch.searchsorted(cu[1:], torch.arange(T), right=True)
    seg = packed_layout(visited[0], chosen[0], sequence, cu[:-1], cu[1:])
    offsets = seg.cu_seqlens.tolist()
    for m in range(M):
        for n in range(3):
            start, end = offsets[m * 3 + n], offsets[m * 3 + n + 1]
            expected = [t for t in range(cu[n], cu[n + 1]) if visited[0, t, m]]
            assert seg.source[start:end].tolist() == expected


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch without _grouped_mm")
def test_grouped_and_dense_projections_agree() -> None:
    B, T, M, S, width = 2, 13, 4, 2, 40
    visited, chosen = random_routing(B, T, M, S)
    sequence = torch.arange(B * T) // T
    starts = torch.arange(B) * T
    seg = packed_layout(visited.view(B * T, M), chosen.view(B * T, S), sequence, starts, starts + T)
    x = torch.randn(B * T, D, requires_grad=True)
    weight = torch.randn(M, D, width, requires_grad=True)
    cotangent = torch.randn(B * T * S, width)
    results = []
    for grouped in (True, False):
        y = project_packed(x, weight, seg, grouped)
        results.append((y, *torch.autograd.grad(y, (x, weight), cotangent)))
    expected = torch.einsum("nd,ndf->nf", x[seg.source], weight[seg.memory])
    torch.testing.assert_close(results[1][0], expected)
    for grouped_value, dense_value in zip(*results, strict=True):
        torch.testing.assert_close(grouped_value, dense_value, rtol=1e-5, atol=1e-5)


def test_packed_layer_under_interpreter() -> None:
    run_under_interpreter(__file__)


def make_layer(H: int, num_memories: int, topk: int, shared_mem: bool) -> MoMAttention:
    layer = MoMAttention(
        D,
        num_heads=H,
        head_dim=K,
        num_memories=num_memories,
        topk=topk,
        shared_mem=shared_mem,
        aux_loss_weight=1e-2,
        backend="triton",
    )
    with torch.no_grad():  # a norm weight of ones would hide a mix-up of its channels
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def compare_with_padded(
    layer: MoMAttention, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The layer's packed (Triton) run equals its padded (PyTorch twin) run, gradients included.
    Returns the stats (router loads) of the packed run."""
    runs = []
    for backend in ("triton", "torch"):
        layer.backend = backend
        leaf = x.detach().requires_grad_()
        out = layer(leaf, cu_seqlens=cu_seqlens)
        loss = (out.hidden * torch.linspace(-1, 1, out.hidden.numel()).view_as(out.hidden)).sum()
        loss = loss + sum(out.aux_losses.values())
        grads = torch.autograd.grad(loss, [leaf, *layer.parameters()])
        runs.append((out, grads))
    (packed, packed_grads), (padded, padded_grads) = runs
    torch.testing.assert_close(packed.hidden, padded.hidden, rtol=1e-4, atol=1e-5)
    assert packed.stats.keys() == padded.stats.keys()
    for name in packed.stats:  # identical routing
        assert torch.equal(packed.stats[name], padded.stats[name]), name
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, got, want in zip(names, packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    return packed.stats


@interpreted
@pytest.mark.parametrize(
    ("B", "T", "H", "num_memories", "topk", "shared_mem"),
    [
        (2, 17, 2, 3, 2, True),
        (1, 70, 1, 4, 2, True),
        (2, 1, 2, 4, 2, False),
        (1, 17, 1, 1, 1, False),
    ],
)
def test_packed_layer_equals_padded(B, T, H, num_memories, topk, shared_mem, monkeypatch) -> None:
    calls = []

    def spy(q, *args, **kwargs):
        calls.append((tuple(q.shape), kwargs.get("cu_seqlens") is not None))
        return chunk_gated_delta_rule(q, *args, **kwargs)

    for layout in (packed, padded):
        monkeypatch.setattr(layout, "chunk_gated_delta_rule", spy)
    layer = make_layer(H, num_memories, topk, shared_mem)
    compare_with_padded(layer, torch.randn(B, T, D))
    S = topk + int(shared_mem)
    if num_memories + int(shared_mem) > 1:
        assert calls[0] == ((1, B * T * S, H, K), True)  # one varlen launch over the packed visits
    else:  # one memory: the sequences are the segments, no dispatch
        assert calls[0] == ((B, T, H, K), False)


@interpreted
def test_packed_layer_with_an_empty_memory_and_grouped_projection(monkeypatch) -> None:
    monkeypatch.setattr(packed, "grouped_mm_fits", lambda x, weight: True)
    layer = make_layer(2, 4, 2, True)
    with torch.no_grad():  # x >= 0: memory 3's logit is always the lowest, never in the top 2
        layer.router.weight.abs_()[3] = -1.0
    stats = compare_with_padded(layer, torch.rand(2, 9, D))
    assert stats["router_load"][3].item() == 0.0


@interpreted
@pytest.mark.parametrize(("num_memories", "topk", "shared_mem"), [(3, 2, True), (1, 1, False)])
def test_packed_layer_on_packed_documents(num_memories, topk, shared_mem) -> None:
    layer = make_layer(1, num_memories, topk, shared_mem)
    compare_with_padded(layer, torch.randn(1, 30, D), torch.tensor([0, 9, 9, 10, 30]))
