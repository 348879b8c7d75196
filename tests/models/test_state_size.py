"""Each mixer's recurrent state size (elements per sequence) against hand-computed numbers, and
the training length a run evaluates it at."""

import functools
from types import SimpleNamespace

import pytest
import torch

from memlab.data import MQARDataModule
from memlab.models import LanguageModel
from memlab.models.layers import Attention, Mamba, MemMamba, MoMAttention
from memlab.utils.state_size import STATE_SIZE, state_size_metric, training_length

from .mixers import memmamba

D = 32


def test_attention_counts_its_kv_cache_at_the_context_length() -> None:
    layer = Attention(D, num_heads=2)  # head_dim 16
    assert layer.state_size(100) == 2 * 2 * 16 * 100 == 6400
    state = layer.init_state(1, torch.device("cpu"), torch.float32)
    layer(torch.randn(1, 10, D), state=state)
    assert layer.state_size(10) == state.k.numel() + state.v.numel()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # (E + shared) · H · K · V
        ({"num_memories": 3, "topk": 2, "shared_mem": True, "expand_v": 2}, 4 * 2 * 8 * 16),
        ({"num_memories": 3, "topk": 2, "shared_mem": False}, 3 * 2 * 8 * 8),
        ({"num_memories": 1, "topk": 1, "shared_mem": False}, 1 * 2 * 8 * 8),  # GDN
    ],
)
def test_mom_counts_its_memories_only(options: dict, expected: int) -> None:
    layer = MoMAttention(D, num_heads=2, head_dim=8, **options)
    assert layer.state_size(100) == layer.state_size(10_000) == expected
    state = layer.init_state(1, torch.device("cpu"), torch.float32)
    assert state.memory.numel() == expected  # the conv tails are not counted


def test_mamba_counts_its_ssm_state() -> None:
    layer = Mamba(D, d_state=4, expand=2)
    assert layer.state_size(100) == 64 * 4 == 256
    assert layer.init_state(1, torch.device("cpu"), torch.float32).ssm.numel() == 256


@pytest.mark.parametrize("recent_slots", [0, 2])
def test_memmamba_adds_its_pool_of_notes(recent_slots: int) -> None:
    # backbone 64 · 4; pool (3 + R) notes of an 8-dim summary and a priority
    layer = MemMamba(
        D, chunk_size=8, pool_size=3, recent_slots=recent_slots, summary_dim=8, backbone={"d_state": 4}
    )
    assert layer.state_size(100) == 256 + (3 + recent_slots) * 9
    assert memmamba(d_model=D).state_size(5) == 256 + 3 * 9


def test_language_model_sums_its_layers() -> None:
    lm = LanguageModel(16, D, n_layers=3, mixer=functools.partial(Mamba, d_state=4))
    assert lm.state_size(64) == 3 * 256
    lm = LanguageModel(16, D, n_layers=2, mixer=functools.partial(Attention, num_heads=2))
    assert lm.state_size(64) == 2 * (2 * 2 * 16 * 64)


def test_training_length_of_each_kind_of_data() -> None:
    assert training_length(SimpleNamespace(seq_len=2048)) == 2048
    mqar = MQARDataModule(
        vocab_size=64,
        train_segments=[
            {"seq_len": 64, "num_kv_pairs": 4, "num_examples": 8},
            {"seq_len": 128, "num_kv_pairs": 8, "num_examples": 8},
        ],
        val_segments=[{"seq_len": 32, "num_kv_pairs": 2, "num_examples": 8}],
        batch_size=4,
    )
    assert training_length(mqar) == 128
    assert training_length(SimpleNamespace()) is None


def test_state_size_metric() -> None:
    lm = LanguageModel(16, D, n_layers=1, mixer=functools.partial(Attention, num_heads=2))
    assert state_size_metric(lm, SimpleNamespace(seq_len=10)) == {STATE_SIZE: 2 * 2 * 16 * 10}
    assert state_size_metric(lm, SimpleNamespace()) == {}
    assert state_size_metric(torch.nn.Linear(2, 2), SimpleNamespace(seq_len=10)) == {}
