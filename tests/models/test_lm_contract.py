"""Properties every language model must have, whatever its mixer: causality, prompt-then-decode
equals the full forward, packed documents do not see each other, generate() works."""

import pytest
import torch

from memlab.errors import ConfigError
from memlab.models import LanguageModel

from .mixers import MIXERS

VOCAB, D = 97, 32


def make_lm(name: str, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    lm = LanguageModel(VOCAB, D, n_layers=2, mixer=MIXERS[name], mlp_ratio=2.0).double()
    return lm.eval()


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("batch", [1, 3])
def test_causal(name: str, batch: int) -> None:
    lm = make_lm(name)
    T, t = 70, 41
    x = torch.randint(0, VOCAB, (batch, T))
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    a, b = lm(x).logits, lm(y).logits
    assert torch.equal(a[:, :t], b[:, :t]), "an output before t depends on token t"
    assert not torch.allclose(a[:, t:], b[:, t:]), "perturbing token t changed nothing after it"


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("prompt", [1, 37, 64])
def test_prompt_then_decode_equals_full_forward(name: str, prompt: int) -> None:
    lm = make_lm(name)
    T = prompt + 9
    x = torch.randint(0, VOCAB, (2, T))
    full = lm(x).logits
    states = lm.init_states(2, torch.device("cpu"), torch.float64)
    parts = [lm(x[:, :prompt], states=states).logits]
    parts += [lm(x[:, i : i + 1], states=states).logits for i in range(prompt, T)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", MIXERS)
def test_packed_documents_are_independent(name: str) -> None:
    lm = make_lm(name)
    lengths = [5, 1, 70, 20]
    docs = [torch.randint(0, VOCAB, (1, n)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = lm(torch.cat(docs, dim=1), cu_seqlens=cu).logits
    separate = torch.cat([lm(d).logits for d in docs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", MIXERS)
def test_generate_greedy_matches_argmax_of_forward(name: str) -> None:
    lm = make_lm(name)
    prompt = torch.randint(0, VOCAB, (2, 11))
    out = lm.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 17) and torch.equal(out[:, :11], prompt)
    logits = lm(out[:, :-1]).logits
    assert torch.equal(logits[:, 10:].argmax(-1), out[:, 11:])
    sampled = lm.generate(prompt, 4, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 15)


@pytest.mark.parametrize("name", MIXERS)
def test_runs_under_bf16_autocast(name: str) -> None:
    """Mixed precision (as trainer=gpu uses) must not mix dtypes inside a mixer's kernels."""
    torch.manual_seed(0)
    lm = LanguageModel(VOCAB, D, n_layers=1, mixer=MIXERS[name], mlp_ratio=2.0)
    x = torch.randint(0, VOCAB, (2, 19))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm(x).logits
    logits.float().sum().backward()
    assert torch.isfinite(logits.float()).all()


def test_mlp_ratio_zero_means_blocks_of_norm_and_mixer_only() -> None:
    torch.manual_seed(0)
    lm = LanguageModel(VOCAB, D, n_layers=2, mixer=MIXERS["mamba"], mlp_ratio=0).double()
    assert not [n for n, _ in lm.named_parameters() if "mlp" in n]
    block, x = lm.layers[0], torch.randn(2, 9, D, dtype=torch.float64)
    torch.testing.assert_close(block(x).hidden, x + block.mixer(block.mixer_norm(x)).hidden, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"model.mlp_ratio must be >= 0"):
        LanguageModel(VOCAB, D, n_layers=1, mixer=MIXERS["mamba"], mlp_ratio=-1)
