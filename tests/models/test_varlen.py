"""Packed documents as padded rows (``memlab.models.modules.varlen``): attention over them
equals each document alone, in values and gradients, with empty and one-token documents; the
rows, and their read of cu_seqlens, are made once per forward pass."""

from __future__ import annotations

import pytest
import torch

from memlab.models import LanguageModel
from memlab.models.layers import Attention
from memlab.models.modules import varlen
from memlab.models.modules.varlen import document_rows


@pytest.mark.parametrize("lengths", [[5, 0, 1, 33], [1], [0, 7, 0]])
def test_attention_over_packed_documents_equals_each_alone(lengths: list[int]) -> None:
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2).double()
    x = torch.randn(1, sum(lengths), 16, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = attn(x, cu_seqlens=cu).hidden
    weight = torch.randn_like(packed)
    grads = torch.autograd.grad((packed * weight).sum(), [x, *attn.parameters()])
    pieces = x.split(lengths, dim=1)
    alone = torch.cat([attn(p).hidden for p in pieces if p.shape[1]], dim=1)
    want = torch.autograd.grad((alone * weight).sum(), [x, *attn.parameters()])
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_rows_are_made_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    real = varlen.DocumentRows
    monkeypatch.setattr(varlen, "DocumentRows", lambda *a: made.append(a[0]) or real(*a))
    lm = LanguageModel(32, 16, 3, lambda **kw: Attention(**kw, num_heads=2))
    cu = torch.tensor([0, 4, 9])
    lm(torch.randint(32, (1, 9)), cu_seqlens=cu)
    assert made == ["Attention"]  # three layers, one read of cu_seqlens
    x = torch.zeros(1, 9, 4)
    assert document_rows("m", cu, x) is document_rows("m", cu, x)
    cu[1] = 5  # changed in place: read again
    assert document_rows("m", cu, x).shape == (2, 5) and len(made) == 2
