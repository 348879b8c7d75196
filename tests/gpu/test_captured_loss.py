"""Training forward and backward replayed from CUDA graphs (``CapturedLoss``, ``module.cuda_graph``)
against eager training, for every mixer in bf16 autocast: the same losses and gradients over
steps that update the weights in place, under gradient accumulation, and through Lightning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memlab.kernels.compare import rel_err
from memlab.models.captured_loss import CapturedLoss
from memlab.train import train
from tests.conftest import TINY, compose_config
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model

# The replay runs the eager step's kernels; only the order of atomic additions may differ.
TOLERANCE = 2e-3


def _backward(forward, ids: torch.Tensor) -> torch.Tensor:
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = forward(ids[:, :-1], targets=ids[:, 1:].flatten())
    loss = out.loss + sum(out.aux_losses.values(), torch.zeros((), device=DEVICE))
    loss.backward()
    return loss.detach()


def _worst(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(rel_err(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", list(MIXERS))
def test_captured_steps_train_as_eager_steps(name: str) -> None:
    eager, graphed = language_model(name, n_layers=2), language_model(name, n_layers=2)
    batches = [torch.randint(VOCAB, (2, 257), device=DEVICE) for _ in range(4)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        captured = CapturedLoss(graphed, batches[0][:, :-1], batches[0][:, 1:].flatten())
    assert all(p.grad is None for p in graphed.parameters())  # capturing trains nothing
    for ids in batches[:2]:  # the graphs read the weights an optimizer updated in place
        want, got = _backward(eager, ids), _backward(captured, ids)
        assert rel_err(got, want) < TOLERANCE and _worst(graphed, eager) < TOLERANCE
        for model in (eager, graphed):
            with torch.no_grad():
                for p in model.parameters():
                    p -= 1e-2 * p.grad
            model.zero_grad(set_to_none=True)
    for ids in batches[2:]:  # accumulated, not zeroed: each backward adds to the last
        _backward(eager, ids), _backward(captured, ids)
    assert _worst(graphed, eager) < TOLERANCE


def test_lightning_trains_from_graphs_as_eagerly(tmp_path: Path) -> None:
    on_gpu = [arg for arg in TINY if not arg.startswith("trainer.accelerator")]
    args = [*on_gpu, "trainer=gpu", "trainer.max_steps=12", "trainer.val_check_interval=6", "test=false"]
    eager = train(compose_config(args, tmp_path / "eager"))
    graphed = train(compose_config([*args, "module.cuda_graph=true"], tmp_path / "graphed"))
    assert abs(graphed["val/loss"] - eager["val/loss"]) < 1e-2 * abs(eager["val/loss"])
