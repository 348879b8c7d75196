"""Optimizer groups, the learning-rate schedule, and how CausalLMModule builds both from partials."""

import functools
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from memlab.lit import CausalLMModule
from memlab.lit.optim import warmup_cosine, warmup_cosine_schedule, weight_decay_groups
from memlab.models import LanguageModel
from memlab.models.layers import Attention


def test_no_decay_on_norms_biases_embeddings() -> None:
    lm = LanguageModel(50, 16, 2, functools.partial(Attention, num_heads=2), tie_embeddings=True)
    lm.extra_bias = torch.nn.Parameter(torch.zeros(4))
    flagged = torch.nn.Parameter(torch.zeros(3, 3))
    flagged._no_weight_decay = True
    lm.flagged = flagged
    decay, no_decay = weight_decay_groups(lm)
    decayed = {id(p) for p in decay["params"]}
    assert id(lm.embed.weight) not in decayed and id(flagged) not in decayed
    assert all(id(layer.mixer_norm.weight) not in decayed for layer in lm.layers)
    assert id(lm.layers[0].mixer.qkv.weight) in decayed
    n_params = len({id(p) for p in lm.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_params  # tied weight counted once
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay  # the optimizer's


@pytest.mark.parametrize("warmup,total,floor", [(10, 100, 0.1), (1, 5, 0.0)])
def test_warmup_cosine(warmup: int, total: int, floor: float) -> None:
    values = [warmup_cosine(s, warmup, total, floor) for s in range(total + 5)]
    assert values[warmup - 1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(values[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(values[warmup - 1 :]))
    assert values[total] == pytest.approx(floor) and values[-1] == pytest.approx(floor)
    assert math.isclose(warmup_cosine(0, warmup, total, floor), 1 / warmup)


def test_module_builds_the_optimizer_and_schedule_from_partials() -> None:
    lm = LanguageModel(50, 16, 1, functools.partial(Attention, num_heads=2))
    module = CausalLMModule(
        lm,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.3, betas=[0.8, 0.9]),
        scheduler=functools.partial(warmup_cosine_schedule, warmup_steps=4, min_lr_ratio=0.5),
    )
    module.trainer = SimpleNamespace(max_steps=20)  # what configure_optimizers reads of it
    built = module.configure_optimizers()
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.0)
    assert decay["betas"] == (0.8, 0.9) and built["lr_scheduler"]["interval"] == "step"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * warmup_cosine(0, 4, 20, 0.5))
    # the checkpoint records plain values, which load as weights only
    assert module.hparams["optimizer"] == {
        "_target_": "torch.optim.adamw.AdamW",
        "lr": 2e-3,
        "weight_decay": 0.3,
        "betas": [0.8, 0.9],
    }
    assert module.hparams["scheduler"]["warmup_steps"] == 4
    optimizer.step()  # no gradients: changes nothing
    scheduler.step()
    assert optimizer.param_groups[1]["lr"] == pytest.approx(2e-3 * warmup_cosine(1, 4, 20, 0.5))
