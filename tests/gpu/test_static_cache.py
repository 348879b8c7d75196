"""An attention decode step over the preallocated KV cache, captured once in a CUDA graph and
replayed token after token, equals eager decoding over the same cache."""

from __future__ import annotations

import torch

from memlab.models.layers import Attention
from memlab.models.static_cache import StaticKVCache, attend


@torch.no_grad()
def test_a_captured_decode_step_equals_eager_decoding() -> None:
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4).cuda().eval()
    x = torch.randn(2, 20, 64, device="cuda")
    prompt = 12
    eager = StaticKVCache.empty(attn, 2, 64, torch.device("cuda"), torch.float32)
    attend(attn, x[:, :prompt], eager)
    expected = [attend(attn, x[:, t : t + 1], eager) for t in range(prompt, x.shape[1])]

    cache = StaticKVCache.empty(attn, 2, 64, torch.device("cuda"), torch.float32)
    attend(attn, x[:, :prompt], cache)
    step_in = x[:, prompt : prompt + 1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        attend(attn, step_in, cache)  # warm-up outside the capture; it advances pos, undone below
    torch.cuda.current_stream().wait_stream(side)
    cache.pos.fill_(prompt)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step_out = attend(attn, step_in, cache)
    for t, want in zip(range(prompt, x.shape[1]), expected, strict=True):
        step_in.copy_(x[:, t : t + 1])
        graph.replay()
        torch.testing.assert_close(step_out, want)
    assert int(cache.pos) == x.shape[1]
