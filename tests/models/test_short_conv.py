"""Short causal convolution: the full form against its definition, cache continuation (full and
one-step forms), the tail of padded rows, and no tap across packed-document boundaries."""

import pytest
import torch
import torch.nn.functional as F

from memlab.models.modules.short_conv import ShortConvolution

F64 = torch.float64
C, W = 6, 4


@pytest.fixture
def conv() -> ShortConvolution:
    torch.manual_seed(0)
    return ShortConvolution(C, W).double()


def by_definition(conv: ShortConvolution, x: torch.Tensor) -> torch.Tensor:
    """y_t = silu(Σ_s w[:, W−1−s] x_{t−s}), taps before the start read zero."""
    T = x.shape[1]
    taps = [sum(conv.weight[:, W - 1 - s] * x[:, t - s] for s in range(W) if t - s >= 0) for t in range(T)]
    return F.silu(torch.stack(taps, dim=1))


def test_full_form_is_the_causal_conv(conv: ShortConvolution) -> None:
    x = torch.randn(2, 9, C, dtype=F64)
    y, tail = conv(x)
    torch.testing.assert_close(y, by_definition(conv, x), rtol=1e-12, atol=1e-12)
    assert tail is None


def test_cache_continues_the_sequence(conv: ShortConvolution) -> None:
    x = torch.randn(2, 12, C, dtype=F64)
    full, _ = conv(x)
    cache = conv.init_cache(2, x.device, F64)
    first, cache = conv(x[:, :2], cache)  # shorter than the tail: it still holds a zero
    parts = [first]
    for t in range(2, 7):
        y, cache = conv.step(x[:, t], cache)
        parts.append(y[:, None])
    rest, cache = conv(x[:, 7:], cache)
    parts.append(rest)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cache, x[:, -(W - 1) :].transpose(1, 2))


def test_tail_of_padded_rows_holds_the_last_real_inputs(conv: ShortConvolution) -> None:
    x = torch.randn(3, 5, C, dtype=F64)
    old = torch.randn(3, C, W - 1, dtype=F64)
    lengths = torch.tensor([5, 1, 0])
    _, tail = conv(x, old, lengths)
    torch.testing.assert_close(tail[0], x[0, 2:].T)
    torch.testing.assert_close(tail[1], torch.cat([old[1, :, 1:], x[1, :1].T], dim=1))
    torch.testing.assert_close(tail[2], old[2])
    _, one_step_tail = conv(x[:, :1], old, lengths.clamp(max=1))
    torch.testing.assert_close(one_step_tail[2], old[2])


def test_no_tap_crosses_a_document_boundary(conv: ShortConvolution) -> None:
    lengths = [3, 1, 7, 2]
    docs = [torch.randn(1, n, C, dtype=F64) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed, _ = conv(torch.cat(docs, dim=1), cu_seqlens=cu)
    separate = torch.cat([conv(doc)[0] for doc in docs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-12, atol=1e-12)
