"""Training forward and backward replayed from CUDA graphs (``CapturedLoss``, ``module.cuda_graph``)
against eager training, for every mixer in bf16 autocast: the same losses and gradients over
steps that update the weights in place, under gradient accumulation, and through Lightning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from memlab.kernels.compare import rel_err
from memlab.models.captured_loss import CapturedLoss
from memlab.train import train
from tests.conftest import TINY, compose_config
from tests.gpu.test_compile import COMPILE_TOL, compile_tol
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model

# The replay runs the eager step's kernels, but several of them sum with atomics: a bf16
# gradient of a step varies from run to run, most where a sum cancels (a small parameter, two
# accumulated batches pulling apart). So each gradient of the replay is held to the fp32 one as
# eager bf16's is: within GRAD_FACTOR times its error, plus TOLERANCE.
TOLERANCE, GRAD_FACTOR = 2e-3, 1.5


def _backward(forward, ids: torch.Tensor, bf16: bool = True) -> torch.Tensor:
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        out = forward(ids[:, :-1], targets=ids[:, 1:].flatten())
    loss = out.loss + sum(out.aux_losses.values(), torch.zeros((), device=DEVICE))
    loss.backward()
    return loss.detach()


def _assert_grads_as_eager(
    graphed: nn.Module,
    eager: nn.Module,
    reference: nn.Module,
    factor: float = GRAD_FACTOR,
    tol: float | Callable[[str], float] = TOLERANCE,
) -> None:
    """Each gradient of ``graphed`` within ``factor`` × eager's error + ``tol`` (or ``tol(name)``)
    of the fp32 ``reference``'s."""
    bad = []
    pairs = zip(eager.parameters(), reference.parameters(), strict=True)
    for (name, g), (e, r) in zip(graphed.named_parameters(), pairs, strict=True):
        error = rel_err(g.grad, r.grad)
        bound = factor * rel_err(e.grad, r.grad) + (tol(name) if callable(tol) else tol)
        if not error <= bound:
            bad.append(f"{name} {error:.2e} > {bound:.2e}")
    assert not bad, "; ".join(bad)


def _update_in_place(models: list[nn.Module]) -> None:
    """One step of eager's (the second model's) gradients for all the models, in place, so they
    stay equal and the graphs must read the new weights; then the gradients are cleared."""
    with torch.no_grad():
        for params in zip(*(m.parameters() for m in models), strict=True):
            update = 1e-2 * params[1].grad
            for p in params:
                p -= update
    for model in models:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(MIXERS))
def test_captured_steps_train_as_eager_steps(name: str) -> None:
    models = reference, eager, graphed = [language_model(name, n_layers=2) for _ in range(3)]
    batches = [torch.randint(VOCAB, (2, 257), device=DEVICE) for _ in range(4)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        captured = CapturedLoss(graphed, batches[0][:, :-1], batches[0][:, 1:].flatten())
    assert all(p.grad is None for p in graphed.parameters())  # capturing trains nothing
    for ids in batches[:2]:  # the graphs read the weights an optimizer updated in place
        want, got = _backward(eager, ids), _backward(captured, ids)
        _backward(reference, ids, bf16=False)
        assert rel_err(got, want) < TOLERANCE  # the forward replays eager's kernels exactly
        _assert_grads_as_eager(graphed, eager, reference)
        _update_in_place(models)
    for ids in batches[2:]:  # accumulated, not zeroed: each backward adds to the last
        _backward(eager, ids), _backward(captured, ids), _backward(reference, ids, bf16=False)
    _assert_grads_as_eager(graphed, eager, reference)


def test_lightning_trains_from_graphs_as_eagerly(tmp_path: Path) -> None:
    on_gpu = [arg for arg in TINY if not arg.startswith("trainer.accelerator")]
    args = [*on_gpu, "trainer=gpu", "trainer.max_steps=12", "trainer.val_check_interval=6", "test=false"]
    eager = train(compose_config(args, tmp_path / "eager"))
    graphed = train(compose_config([*args, "module.cuda_graph=true"], tmp_path / "graphed"))
    assert abs(graphed["val/loss"] - eager["val/loss"]) < 1e-2 * abs(eager["val/loss"])


@pytest.mark.parametrize("name", ["attention", "gdn", "mamba", "mom"])
def test_captured_compiled_blocks_train_as_eager(name: str, fresh_compiler: dict) -> None:
    """``module.compile`` with ``module.cuda_graph``: the compiled blocks' kernels are captured
    (the warm-up passes compile them first) and replay eager's loss and gradients, also after
    the weights changed in place."""
    models = reference, eager, graphed = [language_model(name, n_layers=2) for _ in range(3)]
    graphed.compile_blocks()
    batches = [torch.randint(VOCAB, (2, 257), device=DEVICE) for _ in range(2)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        captured = CapturedLoss(graphed, batches[0][:, :-1], batches[0][:, 1:].flatten())
    assert fresh_compiler["stats"]["unique_graphs"] > 0  # the blocks were compiled, not run eagerly
    for ids in batches:
        want, got = _backward(eager, ids), _backward(captured, ids)
        _backward(reference, ids, bf16=False)
        # inductor rounds to bf16 elsewhere than eager: test_compile.py's bounds
        assert rel_err(got, want) < COMPILE_TOL
        _assert_grads_as_eager(graphed, eager, reference, factor=2, tol=compile_tol)
        _update_in_place(models)
