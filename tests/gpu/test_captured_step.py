"""Decoding replayed from a CUDA graph gives the tokens of eager decoding, for every mixer."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_decoding_equals_eager(name: str, batch: int) -> None:
    model = language_model(name, n_layers=2).eval()
    ids = torch.randint(VOCAB, (batch, 70), device=DEVICE)
    eager = model.generate(ids, 40, prefill_chunk=64)
    assert torch.equal(model.generate(ids, 40, prefill_chunk=64, cuda_graph=True), eager)
    # a second prompt through the same captured step: its caches start empty again
    other = torch.randint(VOCAB, (batch, 70), device=DEVICE)
    assert torch.equal(model.generate(other, 20, cuda_graph=True), model.generate(other, 20))


@pytest.mark.parametrize("name", list(MIXERS))
def test_graph_tokens_are_the_full_forward_argmax(name: str) -> None:
    model = language_model(name, n_layers=2).eval()
    out = model.generate(torch.randint(VOCAB, (2, 40), device=DEVICE), 24, cuda_graph=True)
    with torch.no_grad():
        logits = model(out[:, :-1]).logits
    assert torch.equal(logits[:, 39:].argmax(-1), out[:, 40:])
