"""Activation checkpointing changes memory, never results: equal outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from memlab.errors import ConfigError
from memlab.models import LanguageModel
from tests.models.mixers import MIXERS

VOCAB, D = 40, 16


def _outputs(name: str, policy: str | int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = LanguageModel(VOCAB, D, 3, MIXERS[name], activation_checkpointing=policy).double()
    ids = torch.randint(VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    out = model(ids)
    loss = out.logits.sum() + sum(out.aux_losses.values())
    return [out.logits, *torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("policy", ["every_block", 2])
def test_gradients_equal_with_and_without_checkpointing(name: str, policy: str | int) -> None:
    for got, want in zip(_outputs(name, policy), _outputs(name, "none"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("policy", ["some", 0, True, 1.5])
def test_a_bad_policy_is_one_line(policy: object) -> None:
    with pytest.raises(ConfigError, match=r"model\.activation_checkpointing must be"):
        LanguageModel(VOCAB, D, 2, MIXERS["attention"], activation_checkpointing=policy)
