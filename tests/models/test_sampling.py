"""Sampling the next token: greedy, temperature, top-k and top-p draw from the right support with
the right frequencies, reproducibly from a generator; bad options are one ConfigError line."""

import pytest
import torch

from memlab.errors import ConfigError
from memlab.models.sampling import SamplingConfig, sample

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def rows(n: int) -> torch.Tensor:
    """n identical rows of fp32 logits [n, 4] whose softmax is PROBS."""
    return PROBS.log().expand(n, -1).clone()


def drawn(n: int = 20000, **options) -> torch.Tensor:
    """How often each token was drawn from n rows: fp32 [4], summing to 1."""
    ids = sample(rows(n), generator=torch.Generator().manual_seed(0), **options)
    assert ids.shape == (n, 1) and ids.dtype == torch.int64
    return torch.bincount(ids[:, 0], minlength=4).float() / n


def test_greedy_is_the_argmax() -> None:
    logits = torch.randn(5, 50)
    assert torch.equal(sample(logits), logits.argmax(-1, keepdim=True))
    assert torch.equal(sample(logits, temperature=0.0, top_k=3, top_p=0.5), logits.argmax(-1, keepdim=True))


def test_temperature_one_draws_from_the_softmax() -> None:
    torch.testing.assert_close(drawn(temperature=1.0), PROBS, atol=0.015, rtol=0)


def test_temperature_sharpens_and_flattens() -> None:
    cold = PROBS.pow(2) / PROBS.pow(2).sum()
    torch.testing.assert_close(drawn(temperature=0.5), cold, atol=0.015, rtol=0)
    assert drawn(temperature=100.0).min() > 0.2


@pytest.mark.parametrize(("top_k", "support"), [(1, 1), (2, 2), (3, 3), (4, 4), (10, 4)])
def test_top_k_keeps_the_k_most_likely(top_k: int, support: int) -> None:
    freq = drawn(temperature=1.0, top_k=top_k)
    assert (freq[support:] == 0).all() and (freq[:support] > 0).all()
    kept = PROBS[:support] / PROBS[:support].sum()
    torch.testing.assert_close(freq[:support], kept, atol=0.015, rtol=0)


@pytest.mark.parametrize(
    ("top_p", "support"), [(0.01, 1), (0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (1.0, 4)]
)
def test_top_p_keeps_the_smallest_set_holding_p(top_p: float, support: int) -> None:
    freq = drawn(temperature=1.0, top_p=top_p)
    assert (freq[support:] == 0).all() and (freq[:support] > 0).all()


def test_top_p_works_on_shuffled_vocabularies() -> None:
    """The nucleus is found in sorted order and mapped back to each row's own token ids."""
    perm = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(64)])
    logits = torch.gather(rows(64), 1, perm)
    ids = sample(logits, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(1))
    # token j of row i is the perm[i, j]-th most likely (0 = the most likely)
    ranks = torch.gather(perm, 1, ids)
    assert (ranks <= 1).all()


def test_top_k_and_top_p_together() -> None:
    freq = drawn(temperature=1.0, top_k=3, top_p=0.9)
    # top_k leaves 0.5, 0.3, 0.15 (renormalised: 0.53, 0.32, 0.16): 0.85 < 0.9 keeps all three
    assert (freq[:3] > 0).all() and freq[3] == 0


def test_a_generator_makes_draws_reproducible() -> None:
    logits = torch.randn(8, 100)
    a = sample(logits, 1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = sample(logits, 1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(3))
    c = sample(logits, 1.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, r"^sampling.temperature must be >= 0 \(got -1.0\)$"),
        ({"top_k": 0}, r"^sampling.top_k must be >= 1 \(got 0\)$"),
        ({"top_p": 0.0}, r"^sampling.top_p must be > 0 \(got 0.0\)$"),
        ({"top_p": 1.5}, r"^sampling.top_p must be <= 1 \(got 1.5\)$"),
        ({"top_k": 2.5}, r"^sampling.top_k must be an integer or null \(got 2.5\)$"),
        ({"top": 2}, r"^sampling.top is not an option"),
    ],
)
def test_bad_options_are_one_config_error(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingConfig.build(options)
    assert SamplingConfig.build({"temperature": 1, "top_k": 5, "top_p": 0.9}).top_k == 5
