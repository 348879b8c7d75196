"""``CapturedLoss`` refuses what a CUDA graph cannot hold, and keeps accumulated gradients out
of the graphs' memory; its replay against eager training is checked on the GPU
(tests/gpu/test_captured_loss.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch._dynamo.exc import InternalTorchDynamoError, TorchDynamoException

from memlab.models import LanguageModel
from memlab.models.captured_loss import CapturedLoss, _Layout
from memlab.models.captured_step import NotCapturable
from tests.models.mixers import MIXERS


def test_a_model_off_the_gpu_is_not_capturable() -> None:
    model = LanguageModel(64, 32, 1, MIXERS["gdn"])
    ids = torch.randint(64, (2, 17))
    with pytest.raises(NotCapturable, match="CUDA device"):
        CapturedLoss(model, ids[:, :-1], ids[:, 1:].flatten())


@pytest.mark.parametrize(
    "error, reported",
    [
        (RuntimeError("operation not permitted when stream is capturing"), NotCapturable),
        (
            InternalTorchDynamoError("a compiled block failed"),
            TorchDynamoException,
        ),
    ],
)
def test_capture_errors_name_their_cause(monkeypatch, error: Exception, reported: type) -> None:
    """A step that reads the host cannot be captured; compiled blocks that fail to compile (in
    the warm-up passes) are a compiler error, not a capture one, and are reported as such."""

    def fail(self) -> None:
        raise error

    monkeypatch.setattr(CapturedLoss, "_capture", fail)
    on_gpu = SimpleNamespace(is_cuda=True, clone=lambda: None)  # the capture itself is stubbed
    with pytest.raises(reported) as raised:
        CapturedLoss(LanguageModel(64, 32, 1, MIXERS["gdn"]), on_gpu, on_gpu)
    assert isinstance(raised.value, NotCapturable) == (reported is NotCapturable)


class _Graph:
    """A stand-in for a captured graph: replay() runs ``work``."""

    def __init__(self, work) -> None:
        self.replay = work


def test_accumulated_gradients_survive_the_next_forward_replay() -> None:
    # The two graphs share a memory pool: the forward's temporaries sit where the backward
    # returns its gradients, so a forward replay overwrites them (NaN here). A gradient kept
    # for accumulation (autograd hands over the buffer itself) must be copied before that.
    weight = nn.Parameter(torch.ones(3))
    captured = object.__new__(CapturedLoss)
    static_grad, loss, correct = torch.zeros(3), torch.zeros(()), torch.zeros((), dtype=torch.long)
    captured.params, captured.grads, captured._static_grads = (
        (weight,),
        (static_grad,),
        {static_grad.data_ptr()},
    )
    captured.input_ids, captured.targets = (
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(2, dtype=torch.long),
    )
    captured.outputs, captured.is_differentiable, captured.grad_outputs = (
        (loss, correct),
        (True, False),
        [loss],
    )
    captured.layout, captured.num_layers = _Layout((), ()), 0
    captured.forward_graph = _Graph(lambda: static_grad.fill_(float("nan")))
    captured.backward_graph = _Graph(lambda: static_grad.copy_(torch.arange(3.0)))
    for _ in range(3):
        captured(captured.input_ids, captured.targets).loss.backward()
    assert torch.equal(weight.grad, 3 * torch.arange(3.0))
