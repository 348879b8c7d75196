"""The decoding step's projections through the GEMV kernel (``step_linear`` with GEMV_ROWS
set) against F.linear, for every mixer in bf16: logits of a prefill and decoding steps, and
the graph-captured tokens."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels.compare import rel_err
from memlab.models.modules import step_linear
from tests.gpu.test_models import DEVICE, MIXERS, VOCAB, language_model


def _decode_logits(model, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    states = model.init_states(ids.shape[0], torch.device(DEVICE), torch.bfloat16)
    with torch.no_grad():
        parts = [model(ids[:, :prompt], states=states).logits]
        parts += [model(ids[:, t : t + 1], states=states).logits for t in range(prompt, ids.shape[1])]
    return torch.cat(parts, dim=1).float()


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("batch", [1, 3])
def test_gemv_steps_equal_linear_steps(name: str, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model = language_model(name, n_layers=2).to(torch.bfloat16).eval()
    ids = torch.randint(VOCAB, (batch, 40), device=DEVICE)
    monkeypatch.setattr(step_linear, "GEMV_ROWS", 0)
    want = _decode_logits(model, ids, 20)
    monkeypatch.setattr(step_linear, "GEMV_ROWS", 4)
    got = _decode_logits(model, ids, 20)
    assert rel_err(got[:, 20:], want[:, 20:]) < 2e-2  # the decoded positions: the prefill is shared
    tokens = model.generate(ids[:, :20], 16, cuda_graph=True)
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits.float()
    # greedy tokens are the argmax of the full forward's logits, up to bf16 near-ties
    picked = logits[:, 19:].gather(-1, tokens[:, 20:, None])[..., 0]
    assert (logits[:, 19:].amax(-1) - picked).max() < 0.1
