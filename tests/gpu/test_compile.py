"""Blocks compiled by torch.compile (inductor; the kernel ops opaque) against eager, on the GPU
in bf16 autocast, for every mixer: loss and every gradient as close to the fp32 eager ones as
eager bf16's are, and greedy decoding from the compiled model equal to the full forward's argmax."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels.compare import rel_err
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model

# compiled <= 2·eager + a tolerance against fp32 eager (the layer checks' rule): inductor rounds to
# bf16 elsewhere than eager. A few parameters of a few numbers each (the decay rates, MemMamba's
# one-row note scorer) have gradients that sum terms of both signs from every token, which bf16
# loses several % of in either mode, so they get more room.
COMPILE_TOL = 1e-2
SUMMED_TOL = 5e-2
SUMMED_PARAMS = (".A_log", ".dt_bias", ".scorer.weight", ".scorer.bias")


def compile_tol(name: str) -> float:
    """The additive tolerance of a compiled gradient, by parameter name (``layers.0.mixer.A_log``)."""
    return SUMMED_TOL if name.endswith(SUMMED_PARAMS) else COMPILE_TOL


def _loss_and_grads(model, ids: torch.Tensor, bf16: bool = True) -> list[torch.Tensor]:
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        out = model(ids[:, :-1], targets=ids[:, 1:].flatten())
    loss = out.loss + sum(out.aux_losses.values(), torch.zeros((), device=DEVICE))
    loss.backward()
    grads = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [loss.detach().float(), *grads]


@pytest.mark.parametrize("name", list(MIXERS))
def test_compiled_blocks_train_as_eager(name: str, fresh_compiler: dict) -> None:
    model = language_model(name, n_layers=2)
    ids = torch.randint(VOCAB, (2, 257), device=DEVICE)
    names = ["loss", *(n for n, _ in model.named_parameters())]
    ref = _loss_and_grads(model, ids, bf16=False)
    eager = _loss_and_grads(model, ids)
    bounds = [2 * rel_err(e, r) + compile_tol(n) for n, e, r in zip(names, eager, ref, strict=True)]
    model.compile_blocks()
    for _ in range(2):
        got = _loss_and_grads(model, ids)
        errors = [rel_err(g, r) for g, r in zip(got, ref, strict=True)]
        bad = [f"{n} {e:.2e} > {b:.2e}" for n, e, b in zip(names, errors, bounds, strict=True) if not e <= b]
        assert not bad, "; ".join(bad)
    assert fresh_compiler["stats"]["unique_graphs"] > 0  # compiled, not run eagerly
    model.eval()
    tokens = model.generate(ids[:, :20], 8)
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    assert torch.equal(logits[:, 19:].argmax(-1), tokens[:, 20:])


@pytest.mark.parametrize("name", ["mamba", "memmamba", "mom", "gdn"])
def test_compiled_batch1_prefill_in_chunks(name: str, fresh_compiler: dict) -> None:
    """A batch-1 prompt read in chunks, each continuing the caches, through compiled blocks:
    few rows along a long time axis are where inductor splits its scans across programs."""
    model = language_model(name, n_layers=2).eval()
    ids = torch.randint(VOCAB, (1, 1100), device=DEVICE)
    model.compile_blocks()
    tokens = model.generate(ids, 4, prefill_chunk=512)
    assert fresh_compiler["stats"]["unique_graphs"] > 0
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    assert torch.equal(logits[:, 1099:].argmax(-1), tokens[:, 1100:])
