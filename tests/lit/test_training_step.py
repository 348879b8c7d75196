"""CausalLMModule.training_step scores every position, leaving unlabelled ones out of the
mean (no data-dependent selection, so no host sync): the loss and accuracy of scoring the
labelled positions alone."""

from __future__ import annotations

import functools

import torch

from memlab.data.labels import IGNORE_INDEX
from memlab.lit import CausalLMModule
from memlab.models import LanguageModel
from memlab.models.layers import MoMAttention


def test_training_step_equals_the_labelled_positions_alone(monkeypatch) -> None:
    torch.manual_seed(0)
    mixer = functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2)
    module = CausalLMModule(LanguageModel(40, 16, 2, mixer))
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    ids = torch.randint(40, (3, 12))
    labels = torch.randint(40, (3, 12))
    labels[torch.rand(3, 12) < 0.6] = IGNORE_INDEX  # MQAR-like: few labelled positions
    loss = module.training_step({"input_ids": ids, "labels": labels}, 0)
    mask = labels != IGNORE_INDEX
    want = module.net(ids, logits_mask=mask, targets=labels[mask])
    torch.testing.assert_close(logged["train/loss"], want.loss)
    torch.testing.assert_close(logged["train/acc"], want.correct.float().mean())
    torch.testing.assert_close(loss, want.loss + sum(want.aux_losses.values()))
