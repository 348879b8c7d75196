"""ETMF and ECLMF on constructed cases with known values."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from memlab.errors import ConfigError
from memlab.eval.fidelity import eclmf, eclmf_by_layer, etmf_cosines
from memlab.eval.fidelity_task import evaluate_fidelity, fidelity_options
from memlab.models import LanguageModel
from memlab.models.layers import Attention


def test_eclmf_of_an_identity_or_linear_map_is_one_and_of_noise_near_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=gen)
    assert eclmf(x, x) == pytest.approx(1.0, abs=1e-6)
    assert eclmf(x, x @ torch.randn(16, 16, generator=gen)) == pytest.approx(1.0, abs=1e-5)
    assert abs(eclmf(x, torch.randn(400, 16, generator=gen))) < 0.2
    # per pair of layers: layer l + 2 repeats layer l
    hidden = [x, 2 * x, x, 2 * x]
    assert eclmf_by_layer(hidden, 2) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert eclmf_by_layer(hidden, 5) == []


def test_etmf_of_a_prediction_of_the_paired_token_is_one() -> None:
    embedding = torch.randn(11, 8)
    ids = torch.randint(0, 11, (2, 9))
    peaked = 50.0 * torch.nn.functional.one_hot(ids, 11).float()  # predicts x_j at j
    assert etmf_cosines(peaked, ids, embedding, "position") == pytest.approx(torch.ones(2, 9), abs=1e-5)
    shifted = torch.roll(peaked, -1, dims=1)  # predicts x_{j+1} at j
    next_token = etmf_cosines(shifted, ids, embedding, "next_token")
    assert next_token.shape == (2, 8) and next_token == pytest.approx(torch.ones(2, 8), abs=1e-5)
    # a uniform prediction expects the mean embedding
    uniform = etmf_cosines(torch.zeros(1, 9, 11), ids[:1], embedding)
    expected = torch.nn.functional.cosine_similarity(embedding.mean(0), embedding[ids[0]], dim=-1)
    assert uniform[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="pairing"):
        etmf_cosines(peaked, ids, embedding, "previous")


def _echo_model(vocab: int = 16, n_layers: int = 3) -> LanguageModel:
    """Layers that add nothing (zero output projections, no MLP) over orthogonal embeddings tied
    to the head: every layer's output is its input token's embedding, which the head predicts."""
    lm = LanguageModel(vocab, vocab, n_layers, mixer=lambda **kw: Attention(**kw, num_heads=2), mlp_ratio=0)
    with torch.no_grad():
        lm.embed.weight.copy_(10 * torch.eye(vocab))
        for layer in lm.layers:
            layer.mixer.out.weight.zero_()
    return lm.eval()


def test_a_model_that_predicts_its_input_token() -> None:
    tokens = np.random.default_rng(0).integers(0, 16, 3 * 40).astype(np.int32)
    result = evaluate_fidelity(_echo_model(), tokens, length=40, max_blocks=2, gaps=[2, 5])
    assert result.tokens == 80 and result.pairing == "position"
    assert result.etmf == pytest.approx([1.0] * 3, abs=1e-6)
    assert result.eclmf[2] == pytest.approx([1.0], abs=1e-6) and result.eclmf[5] == []
    metrics = result.metrics()
    assert metrics["fidelity/etmf/mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["fidelity/eclmf/g2/layer0"] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(metrics["fidelity/eclmf/g5/mean"])
    assert "| mean | 1.0000 | 1.0000 |" in result.table()
    # paired with the next token instead, the echo is only as good as a repeated token
    shifted = evaluate_fidelity(_echo_model(), tokens, 40, 2, [2], pairing="next_token")
    assert shifted.etmf[-1] < 0.2


def test_bad_options_and_too_little_text_are_one_line_errors() -> None:
    good = {"pairing": "position", "gaps": [2, 5, 10], "length": 64, "max_blocks": 2, "split": "test"}
    assert fidelity_options(OmegaConf.create(good))["gaps"] == [2, 5, 10]
    for key, value, message in [
        ("pairing", "previous", "fidelity.pairing=previous"),
        ("gaps", [0], "fidelity.gaps"),
        ("split", "train", "fidelity.split=train"),
    ]:
        with pytest.raises(ConfigError, match=message):
            fidelity_options(OmegaConf.create({**good, key: value}))
    with pytest.raises(ConfigError, match=r"fewer than fidelity\.length=64"):
        evaluate_fidelity(_echo_model(), np.zeros(10, dtype=np.int32), 64, 1, [2])
