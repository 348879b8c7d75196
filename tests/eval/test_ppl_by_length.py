"""Perplexity by length: chunked reading with carried state equals one pass for every mixer; the
overall, per-length and per-position numbers are the right means of the token NLLs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memlab.eval.chunked import token_nll
from memlab.eval.ppl_by_length import evaluate_ppl_by_length
from memlab.models import LanguageModel

from ..models.mixers import MIXERS


def tiny_lm(mixer: str, vocab: int = 61) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(vocab, 16, 2, MIXERS[mixer]).eval()


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("chunk_size", [1, 7, 16])
def test_chunked_with_state_equals_single_pass(mixer: str, chunk_size: int) -> None:
    net = tiny_lm(mixer).double()
    tokens = torch.randint(0, 61, (2, 71), generator=torch.Generator().manual_seed(1))
    single = token_nll(net, tokens, chunk_size=None)
    chunked = token_nll(net, tokens, chunk_size=chunk_size)
    assert single.shape == (2, 70) and single.dtype == torch.float32
    torch.testing.assert_close(chunked, single, rtol=1e-5, atol=1e-5)


def test_table_buckets_and_overall_are_means_of_token_nll() -> None:
    net = tiny_lm("attention")
    tokens = np.random.default_rng(0).integers(0, 61, 300).astype(np.int32)
    result = evaluate_ppl_by_length(
        net, tokens, [16, 40, 64, 512], "bytes", bucket=24, max_blocks=3, batch_size=2
    )
    assert list(result.lengths) == [16, 40, 64] and result.blocks == {16: 3, 40: 3, 64: 3}
    assert "needs 513 tokens" in result.skipped[512]
    blocks = torch.from_numpy(tokens[: 3 * 65].astype(np.int64)).view(3, 65)
    nll = token_nll(net, blocks)
    assert result.overall == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    assert result.lengths[64] == pytest.approx(result.overall)
    assert [s for s, _ in result.buckets] == [0, 24, 48]
    assert result.buckets[2][1] == pytest.approx(math.exp(nll[:, 48:].mean().item()), rel=1e-5)
    short = token_nll(net, torch.from_numpy(tokens[: 3 * 17].astype(np.int64)).view(3, 17))
    assert result.lengths[16] == pytest.approx(math.exp(short.mean().item()), rel=1e-5)
    metrics = result.metrics()
    assert {"ppl/overall", "ppl/length/16", "ppl/position/24"} <= set(metrics)
    assert "| 40 | 3 |" in result.table() and "| 512 | 0 |" in result.table()
    chunked = evaluate_ppl_by_length(
        net, tokens, [16, 40, 64, 512], "bytes", bucket=24, max_blocks=3, chunk_size=10, batch_size=2
    )
    assert chunked.metrics() == pytest.approx(metrics, rel=1e-4)


def test_chunks_refuse_an_empty_step() -> None:
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        token_nll(tiny_lm("attention"), torch.zeros(1, 9, dtype=torch.long), chunk_size=0)
