"""``LanguageModel.compile_blocks``: every mixer's blocks traced by torch.compile (the kernel
ops opaque) give the eager loss and gradients; ``module.compile`` compiles them once. The
compiler's own code generation is checked on the GPU (tests/gpu/test_compile.py); here the
"aot_eager" backend traces forward and backward without generating code."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from memlab.lit import CausalLMModule
from memlab.models import LanguageModel
from tests.models.mixers import MIXERS


def _loss_and_grads(model: LanguageModel, ids: torch.Tensor) -> list[torch.Tensor]:
    out = model(ids[:, :-1], targets=ids[:, 1:].flatten())
    loss = out.loss + sum(out.aux_losses.values(), torch.zeros(()))
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [loss.detach(), *grads]


@pytest.mark.parametrize("name", list(MIXERS))
def test_compiled_blocks_give_the_eager_loss_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = LanguageModel(64, 32, 2, MIXERS[name])
    ids = torch.randint(64, (2, 33))
    want = _loss_and_grads(model, ids)
    names = [n for n, _ in model.named_parameters()]
    model.compile_blocks(backend="aot_eager")
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints load as before
    for _ in range(2):  # the second pass reuses the compiled code
        got = _loss_and_grads(model, ids)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_module_compiles_its_network_once(monkeypatch: pytest.MonkeyPatch) -> None:
    net = LanguageModel(64, 32, 1, MIXERS["gdn"])
    calls = []
    monkeypatch.setattr(net, "compile_blocks", lambda **kw: calls.append(kw))
    module = CausalLMModule(net, compile=True)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace())  # no sharding strategy
    module.configure_model()
    module.configure_model()  # trainer.test after trainer.fit configures the model again
    assert calls == [{}]
    eager = CausalLMModule(LanguageModel(64, 32, 1, MIXERS["gdn"]))
    eager._trainer = module._trainer
    eager.configure_model()
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in eager.net.layers)
