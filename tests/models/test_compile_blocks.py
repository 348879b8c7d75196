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
def test_compiled_blocks_give_the_eager_loss_and_gradients(name: str, fresh_compiler: dict) -> None:
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
    assert fresh_compiler["stats"]["unique_graphs"] > 0


def test_compiled_memmamba_leaves_its_chunk_layout_to_the_host() -> None:
    """MemMamba's chunk layout is host code (integer work on the CPU, pinned copies to the
    device, an lru_cache) that compiled blocks call as it is: traced, dynamo would drop the cache
    and turn the layout into graph code, and on the GPU it fails on ``pin_memory``, which fake
    tensors lack. No graph the compiler is given holds an op of it."""
    traced: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        traced.extend(str(node.meta.get("stack_trace", "")) for node in gm.graph.nodes)
        return gm.forward

    torch.manual_seed(0)
    model = LanguageModel(64, 32, 2, MIXERS["memmamba"])
    model.compile_blocks(backend=backend)
    _loss_and_grads(model, torch.randint(64, (2, 33)))
    host = ("in chunk_layout\n", "in _cached_layout\n", "in _build_layout\n")
    assert traced and not [t for t in traced if any(name in t for name in host)]


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
