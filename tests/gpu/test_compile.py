"""Blocks compiled by torch.compile (inductor; the kernel ops opaque) against eager, on the GPU
in bf16 autocast, for every mixer: loss and every gradient within bf16 tolerance, and greedy
decoding from the compiled model equal to the full forward's argmax."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels.compare import rel_err
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model


def _loss_and_grads(model, ids: torch.Tensor) -> list[torch.Tensor]:
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = model(ids[:, :-1], targets=ids[:, 1:].flatten())
    loss = out.loss + sum(out.aux_losses.values(), torch.zeros((), device=DEVICE))
    loss.backward()
    grads = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [loss.detach().float(), *grads]


@pytest.mark.parametrize("name", list(MIXERS))
def test_compiled_blocks_train_as_eager(name: str) -> None:
    model = language_model(name, n_layers=2)
    ids = torch.randint(VOCAB, (2, 257), device=DEVICE)
    want = _loss_and_grads(model, ids)
    model.compile_blocks()
    for _ in range(2):
        got = _loss_and_grads(model, ids)
        worst = max(rel_err(a, b) for a, b in zip(got, want, strict=True))
        assert worst < 3e-2, worst
    model.eval()
    tokens = model.generate(ids[:, :20], 8)
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    assert torch.equal(logits[:, 19:].argmax(-1), tokens[:, 20:])
