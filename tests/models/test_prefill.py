"""A prompt read in chunks through the per-layer caches continues exactly as one read in one pass,
for every mixer: the same last logits, the same greedy continuation."""

import pytest
import torch

from memlab.errors import ConfigError
from memlab.models.chunked import prefill

from .mixers import MIXERS
from .test_lm_contract import VOCAB, make_lm


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("chunk", [1, 16, 23])
def test_chunked_prefill_equals_one_pass(name: str, chunk: int) -> None:
    lm = make_lm(name)
    prompt = torch.randint(0, VOCAB, (2, 70))
    whole = lm(prompt).logits[:, -1]
    states = lm.init_states(2, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(prefill(lm, prompt, chunk, states), whole, rtol=1e-9, atol=1e-9)
    once = lm.generate(prompt, max_new_tokens=5)
    assert torch.equal(lm.generate(prompt, max_new_tokens=5, prefill_chunk=chunk), once)


def test_stream_yields_the_prompt_then_each_token() -> None:
    lm = make_lm("gdn")
    prompt = torch.randint(0, VOCAB, (3, 9))
    pieces = list(
        lm.stream(prompt, 4, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    )
    assert torch.equal(pieces[0], prompt) and [p.shape for p in pieces[1:]] == [(3, 1)] * 4
    again = lm.generate(prompt, 4, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(pieces, dim=1), again)


def test_no_new_tokens_returns_the_prompt() -> None:
    lm = make_lm("mamba")
    prompt = torch.randint(0, VOCAB, (1, 5))
    assert torch.equal(lm.generate(prompt, 0, prefill_chunk=2), prompt)


def test_generate_refuses_bad_sampling_values() -> None:
    lm = make_lm("mamba")
    with pytest.raises(ConfigError, match=r"^sampling.top_p must be > 0 \(got 0.0\)$"):
        lm.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=1.0, top_p=0.0)
