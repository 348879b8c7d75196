"""Decoding replayed from a CUDA graph gives the tokens of eager decoding, for every mixer that
can be captured; MemMamba, whose note pool counts tokens on the host, is refused by name."""

from __future__ import annotations

import pytest
import torch

from memlab.models.captured_step import NotCapturable
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model


@pytest.mark.parametrize("name", [n for n in MIXERS if n != "memmamba"])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_decoding_equals_eager(name: str, batch: int) -> None:
    model = language_model(name, n_layers=2).eval()
    ids = torch.randint(VOCAB, (batch, 70), device=DEVICE)
    eager = model.generate(ids, 40, prefill_chunk=64)
    assert torch.equal(model.generate(ids, 40, prefill_chunk=64, cuda_graph=True), eager)
    # a second prompt through the same captured step: its caches start empty again
    other = torch.randint(VOCAB, (batch, 70), device=DEVICE)
    assert torch.equal(model.generate(other, 20, cuda_graph=True), model.generate(other, 20))


def test_memmamba_is_refused_by_name() -> None:
    model = language_model("memmamba", n_layers=2).eval()
    with pytest.raises(NotCapturable, match="position"):
        model.generate(torch.randint(VOCAB, (1, 8), device=DEVICE), 4, cuda_graph=True)
