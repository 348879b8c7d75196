"""Sampling on the GPU: no host synchronisation, and it runs inside a captured CUDA graph whose
replays draw fresh tokens from the right support."""

from __future__ import annotations

import pytest
import torch

from memlab.models.sampling import sample

OPTIONS = [
    {},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 50},
    {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_sampling_does_not_synchronise_with_the_host(options: dict) -> None:
    logits = torch.randn(4, 1000, device="cuda")
    generator = torch.Generator("cuda").manual_seed(0)
    sample(logits, generator=generator, **options)  # first calls may set up kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sample(logits, generator=generator, **options)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sampling_is_captured_in_a_cuda_graph_and_replays_draw_afresh() -> None:
    logits = torch.randn(4, 1000, device="cuda")
    options = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sample(logits, **options)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sample(logits, **options)
    draws = []
    for _ in range(32):
        graph.replay()
        draws.append(out.clone())
    drawn = torch.cat(draws, dim=1)  # [4, 32]
    top = logits.topk(50, dim=-1).indices  # [4, 50]
    assert (drawn.unsqueeze(-1) == top.unsqueeze(1)).any(-1).all(), "a token outside the top 50"
    assert len(set(drawn[0].tolist())) > 1, "every replay drew the same token"
