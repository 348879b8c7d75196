"""The preallocated KV cache computes what the growing one does: a prompt, then tokens one at a
time, give the same outputs; its buffers never move or change shape."""

import pytest
import torch

from memlab.models.layers import Attention
from memlab.models.static_cache import StaticKVCache, attend

D = 32


@pytest.mark.parametrize("prompt", [1, 13])
@pytest.mark.parametrize("head_dim", [None, 6])
def test_static_cache_equals_the_growing_cache(prompt: int, head_dim: int | None) -> None:
    torch.manual_seed(0)
    attn = Attention(D, num_heads=4, head_dim=head_dim).double().eval()
    x = torch.randn(2, prompt + 7, D, dtype=torch.float64)
    growing = attn.init_state(2, torch.device("cpu"), torch.float64)
    static = StaticKVCache.empty(attn, 2, 32, torch.device("cpu"), torch.float64)
    buffers = (static.k.data_ptr(), static.v.data_ptr(), static.pos.data_ptr())
    steps = [slice(0, prompt)] + [slice(t, t + 1) for t in range(prompt, x.shape[1])]
    for part in steps:
        expected = attn(x[:, part], state=growing).hidden
        torch.testing.assert_close(attend(attn, x[:, part], static), expected, rtol=1e-12, atol=1e-12)
    assert int(static.pos) == x.shape[1] == growing.length
    torch.testing.assert_close(static.k[:, :, : x.shape[1]], growing.k, rtol=0, atol=0)
    assert (static.k.data_ptr(), static.v.data_ptr(), static.pos.data_ptr()) == buffers
    assert static.k.shape == (2, 4, 32, head_dim or D // 4)


def test_reset_starts_a_new_sequence_in_the_same_buffers() -> None:
    torch.manual_seed(0)
    attn = Attention(D, num_heads=2).double().eval()
    x = torch.randn(1, 5, D, dtype=torch.float64)
    cache = StaticKVCache.empty(attn, 1, 8, torch.device("cpu"), torch.float64)
    first = attend(attn, x, cache)
    attend(attn, torch.randn(1, 3, D, dtype=torch.float64), cache)
    cache.reset()
    torch.testing.assert_close(attend(attn, x, cache), first, rtol=0, atol=0)
    with pytest.raises(IndexError):
        attend(attn, x, cache)  # 10 positions in a cache of 8
