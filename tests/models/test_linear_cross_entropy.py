"""The chunked linear cross-entropy against the unfused loss: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.models.modules.linear_cross_entropy import linear_cross_entropy


def _inputs(n: int, dtype: torch.dtype, ignored: float = 0.3):
    gen = torch.Generator().manual_seed(n)
    hidden = torch.randn(n, 24, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(
        50, 24, generator=gen, dtype=torch.float64 if dtype == torch.float64 else torch.float32
    )
    targets = torch.randint(50, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < ignored] = -100
    return hidden, weight.requires_grad_(), targets


def _unfused(hidden, weight, targets):
    logits = F.linear(hidden, weight.to(hidden.dtype))
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


@pytest.mark.parametrize("n", [1, 7, 16, 33])
@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 1000])
def test_matches_the_unfused_loss_and_gradients_in_fp64(n: int, chunk_rows: int) -> None:
    hidden, weight, targets = _inputs(n, torch.float64)
    if (targets == -100).all():
        targets[0] = 3
    got = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    want = _unfused(hidden, weight, targets)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(2.5 * got, (hidden, weight))
    w = torch.autograd.grad(2.5 * want, (hidden, weight))
    for a, b in zip(g, w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_hidden_with_fp32_weights_is_close_to_the_unfused_loss() -> None:
    hidden, weight, targets = _inputs(40, torch.bfloat16)
    got = linear_cross_entropy(hidden, weight, targets, chunk_rows=9)
    want = _unfused(hidden, weight, targets)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    (dh, dw), (wh, ww) = (torch.autograd.grad(x, (hidden, weight)) for x in (got, want))
    assert dh.dtype == torch.bfloat16 and dw.dtype == torch.float32
    torch.testing.assert_close(dh.float(), wh.float(), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(dw, ww, rtol=2e-2, atol=1e-3)


def test_no_target_gives_zero_loss_and_zero_gradients() -> None:
    hidden, weight, targets = _inputs(6, torch.float64)
    targets[:] = -100
    loss = linear_cross_entropy(hidden, weight, targets)
    assert loss.item() == 0.0
    dh, dw = torch.autograd.grad(loss, (hidden, weight))
    assert not dh.any() and not dw.any()


def test_the_language_model_computes_its_loss_in_chunks() -> None:
    """forward(targets=...) gives the loss and hits of the logits path, and the same gradients."""
    from memlab.models import LanguageModel
    from memlab.models.layers import Mamba

    torch.manual_seed(0)
    lm = LanguageModel(30, 16, 2, lambda d_model, layer_idx: Mamba(d_model, layer_idx, d_state=4)).double()
    ids, labels = torch.randint(30, (2, 9)), torch.randint(30, (2, 9))
    mask = torch.rand(2, 9) < 0.7
    logits = lm(ids, logits_mask=mask).logits
    want = F.cross_entropy(logits, labels[mask])
    out = lm(ids, logits_mask=mask, targets=labels[mask])
    assert out.logits is None
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(out.correct, logits.argmax(-1) == labels[mask])
    params = list(lm.parameters())
    for a, b in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
