"""``module.cuda_graph``: true captures the training step or refuses with one error, "auto"
captures where it can and otherwise trains eagerly (off a GPU, or where the step cannot be
captured), anything else is refused. The capture itself is tested on the GPU
(tests/gpu/test_captured_loss.py)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from memlab.errors import ConfigError
from memlab.lit import CausalLMModule
from memlab.models import LanguageModel
from memlab.models.layers import MoMAttention

MIXER = functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=1, topk=1, shared_mem=False)


def _module(cuda_graph: bool | str) -> CausalLMModule:
    torch.manual_seed(0)
    module = CausalLMModule(LanguageModel(40, 16, 1, MIXER), cuda_graph=cuda_graph)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace())  # no sharding strategy
    return module


def _loss(module: CausalLMModule) -> torch.Tensor:
    ids = torch.randint(40, (2, 9), generator=torch.Generator().manual_seed(1))
    return module._train_forward(ids[:, :-1], None, ids[:, 1:].flatten()).loss


def test_auto_trains_eagerly_off_the_gpu() -> None:
    module = _module("auto")
    module.on_fit_start()
    assert not module._graphs
    torch.testing.assert_close(_loss(module), _loss(_module(False)))
    assert module._captured is None


def test_auto_trains_eagerly_where_the_step_cannot_be_captured() -> None:
    module = _module("auto")
    module._graphs = True  # as on a GPU: the capture of this CPU model then fails
    with pytest.warns(UserWarning, match=r"module\.cuda_graph=auto: training eagerly"):
        loss = _loss(module)
    torch.testing.assert_close(loss, _loss(_module(False)))
    assert not module._graphs
    with pytest.raises(ConfigError, match=r"set module\.cuda_graph=false"):
        _loss(_module(True))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_other_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"cuda_graph must be True, False or 'auto'"):
        CausalLMModule(LanguageModel(40, 16, 1, MIXER), cuda_graph=value)
