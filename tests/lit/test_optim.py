"""AdamW groups and the learning-rate schedule."""

import functools
import itertools
import math

import pytest
import torch

from memlab.lit.optim import warmup_cosine, weight_decay_groups
from memlab.models import LanguageModel
from memlab.models.layers import Attention


def test_no_decay_on_norms_biases_embeddings() -> None:
    lm = LanguageModel(50, 16, 2, functools.partial(Attention, num_heads=2), tie_embeddings=True)
    lm.extra_bias = torch.nn.Parameter(torch.zeros(4))
    flagged = torch.nn.Parameter(torch.zeros(3, 3))
    flagged._no_weight_decay = True
    lm.flagged = flagged
    decay, no_decay = weight_decay_groups(lm, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(lm.embed.weight) not in decayed and id(flagged) not in decayed
    assert all(id(layer.mixer_norm.weight) not in decayed for layer in lm.layers)
    assert id(lm.layers[0].mixer.qkv.weight) in decayed
    n_params = len({id(p) for p in lm.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_params  # tied weight counted once
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("warmup,total,floor", [(10, 100, 0.1), (1, 5, 0.0)])
def test_warmup_cosine(warmup: int, total: int, floor: float) -> None:
    values = [warmup_cosine(s, warmup, total, floor) for s in range(total + 5)]
    assert values[warmup - 1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(values[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(values[warmup - 1 :]))
    assert values[total] == pytest.approx(floor) and values[-1] == pytest.approx(floor)
    assert math.isclose(warmup_cosine(0, warmup, total, floor), 1 / warmup)
