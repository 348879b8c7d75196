"""Text passkey: the prompt layout, the exact-match rule, chunked greedy decoding, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memlab.data.text import ByteTokenizer
from memlab.errors import ConfigError
from memlab.eval import passkey
from memlab.eval.chunked import greedy_continuation
from memlab.eval.passkey_text import FILLER, QUESTION, TASK, answer_is_key, evaluate_passkey, passkey_prompt
from memlab.models import LanguageModel

from ..models.mixers import MIXERS

TOK = ByteTokenizer()


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_puts_the_key_at_its_depth(depth: float) -> None:
    prompt = passkey_prompt(TOK, 2000, depth, 40917)
    text = TOK.decode(prompt.tolist())
    assert 2000 - len(FILLER) < len(prompt) <= 2000
    assert text.startswith(TASK) and text.endswith(QUESTION)
    needle = text.index("The pass key is 40917. Remember it. 40917 is the pass key.")
    fillers_before = text[:needle].count("The grass is green.")
    assert fillers_before == round(depth * text.count("The grass is green."))
    with pytest.raises(ConfigError, match="cannot hold"):
        passkey_prompt(TOK, 100, depth, 40917)


def test_exact_answer_rule() -> None:
    assert answer_is_key(" 40917.", 40917) and answer_is_key("40917 is", 40917)
    assert not any(answer_is_key(t, 40917) for t in (" 409170", " 4091", " the key", " 40918"))


@pytest.mark.parametrize("mixer", ["attention", "mom", "mamba"])
def test_chunked_greedy_decoding_equals_generate(mixer: str) -> None:
    torch.manual_seed(0)
    net = LanguageModel(257, 16, 2, MIXERS[mixer]).eval()
    prompt = torch.randint(0, 257, (1, 45))
    expected = net.generate(prompt, 6)[:, 45:]
    assert torch.equal(greedy_continuation(net, prompt, 6, chunk_size=8), expected)


def test_grid_counts_exact_answers(monkeypatch) -> None:
    """A stand-in decoder that answers right only when the key sits in the first half of the prompt."""

    def decoder(net, prompt, new_tokens, chunk_size):
        text = TOK.decode(prompt[0].tolist())
        key = text.split("The pass key is ")[1][:5]
        right = text.index("The pass key is") < len(text) / 2
        return torch.tensor([TOK.encode_batch([f" {key if right else '00000'}."])[0].tolist()])

    monkeypatch.setattr(passkey, "greedy_continuation", decoder)
    net = LanguageModel(257, 8, 1, MIXERS["attention"])
    result = evaluate_passkey(net, TOK, [600, 1200], [0.0, 0.25, 1.0], trials=3)
    assert result.accuracy == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    metrics = result.metrics()
    assert metrics["passkey/acc"] == pytest.approx(4 / 6) and metrics["passkey/acc/1200/25"] == 1.0
    assert np.isfinite(list(metrics.values())).all()
