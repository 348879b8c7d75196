"""Passkey retrieval: the generator's layout, the DataModule's exact resume and errors, greedy
answers with chunked prefill, the grid's errors, and the length × depth grid of a real short
run (scalars, TensorBoard figure, PNG)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from memlab.data.passkey import PasskeyDataModule, _TrainStream
from memlab.data.tasks.passkey import FIRST_DIGIT, FIRST_FILLER, IGNORE_INDEX, NEEDLE, QUERY, make_passkey
from memlab.errors import ConfigError
from memlab.eval.chunked import greedy_continuation
from memlab.lit.callbacks import PasskeyGrid
from memlab.models import LanguageModel
from memlab.train import train

from ..conftest import compose_config
from ..models.mixers import memmamba


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0, None])
def test_layout_labels_and_depth(depth: float | None) -> None:
    L, n, V = 40, 4, 20
    ids, labels, depths = make_passkey(50, L, n, V, depth, rng=np.random.default_rng(0))
    assert ids.shape == labels.shape == (50, L) and ids.dtype == labels.dtype == np.int64
    filler = L - 2 * n - 1
    for row, lab, d in zip(ids, labels, depths, strict=True):
        start = int(np.flatnonzero(row == NEEDLE)[0])
        assert start == round(d * filler) and (row == NEEDLE).sum() == 1 and (row == QUERY).sum() == 1
        digits = row[start + 1 : start + 1 + n]
        assert ((digits >= FIRST_DIGIT) & (digits < FIRST_FILLER)).all()
        assert row[L - n] == QUERY and (row[L - n + 1 :] == digits[:-1]).all()
        assert (lab[L - n :] == digits).all() and (lab[: L - n] == IGNORE_INDEX).all()
        rest = np.delete(row, [*range(start, start + n + 1), *range(L - n, L)])
        assert rest.size == filler and ((rest >= FIRST_FILLER) & (rest < V)).all()
    if depth is not None:
        assert np.allclose(depths, round(depth * filler) / filler)
    again = make_passkey(50, L, n, V, depth, rng=np.random.default_rng(0))
    assert np.array_equal(again[0], ids) and np.array_equal(again[1], labels)


def test_generator_refuses_impossible_sizes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="seq_len"):
        make_passkey(1, 10, 5, 64, rng=rng)
    with pytest.raises(ValueError, match="vocab_size"):
        make_passkey(1, 64, 5, 12, rng=rng)
    with pytest.raises(ValueError, match="depth"):
        make_passkey(1, 64, 5, 64, depth=1.5, rng=rng)


def test_train_stream_resumes_exactly_and_splits_differ() -> None:
    data = PasskeyDataModule(vocab_size=32, seq_len=24, needle_len=3, batch_size=4, num_val_examples=8)
    loader = data.train_dataloader()
    first = [b["input_ids"] for _, b in zip(range(5), loader, strict=False)]
    resumed = PasskeyDataModule(vocab_size=32, seq_len=24, needle_len=3, batch_size=4)
    tail = [b["input_ids"] for _, b in zip(range(2), _TrainStream(resumed, 3, 0, 1), strict=False)]
    assert all(torch.equal(a, b) for a, b in zip(first[3:], tail, strict=True))
    assert not torch.equal(first[0], first[1])
    val = next(iter(data.val_dataloader()))
    test = next(iter(data.test_dataloader()))
    assert val["input_ids"].shape == (4, 24) and not torch.equal(val["input_ids"], test["input_ids"])


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"vocab_size": 12}, "vocab_size"),
        ({"seq_len": 10, "needle_len": 5}, "seq_len"),
        ({"needle_len": 0}, "needle_len"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_datamodule_refuses_bad_config(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{key}"):
        PasskeyDataModule(**kwargs)


def test_train_loader_is_identical_with_and_without_workers() -> None:
    def first_batches(num_workers: int) -> list[torch.Tensor]:
        data = PasskeyDataModule(
            vocab_size=32, seq_len=24, needle_len=3, batch_size=4, num_workers=num_workers
        )
        return [b["input_ids"] for _, b in zip(range(5), data.train_dataloader(), strict=False)]

    assert all(torch.equal(a, b) for a, b in zip(first_batches(0), first_batches(2), strict=True))


def test_grid_answers_with_chunked_prefill_equal_generate() -> None:
    """The grid's decoding (prompts read in pieces through MemMamba's caches, pieces ending
    inside and at the end of its chunks of 8) answers as ``generate`` does."""
    torch.manual_seed(0)
    lm = LanguageModel(29, 16, 2, memmamba).double().eval()
    prompts = torch.randint(0, 29, (3, 23))
    expected = lm.generate(prompts, 4)[:, 23:]
    for chunk in (1, 5, 8, 64):
        assert torch.equal(greedy_continuation(lm, prompts, 4, chunk), expected)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"length_multiples": []}, "length_multiples"),
        ({"length_multiples": [1, 0]}, "length_multiples"),
        ({"depths": [0.5, 1.5]}, "depths"),
        ({"depths": ["x"]}, "depths"),
        ({"num_samples": "x"}, "num_samples"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"prefill_chunk": 0}, "prefill_chunk"),
    ],
)
def test_grid_refuses_bad_config(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"callbacks.passkey_grid.{key}"):
        PasskeyGrid(**kwargs)


def test_short_run_logs_the_length_depth_grid(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=passkey",
            "hydra.mode=RUN",
            "model.d_model=16",
            "model.n_layers=2",
            "model.mixer.chunk_size=8",
            "model.mixer.num_heads=2",
            "model.mixer.head_dim=8",
            "model.mixer.summary_dim=8",
            "model.mixer.backbone.d_state=4",
            "data.seq_len=24",
            "data.needle_len=3",
            "data.batch_size=4",
            "data.num_val_examples=4",
            "data.num_test_examples=4",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "trainer.accelerator=cpu",
            "callbacks.passkey_grid.length_multiples=[1,2.5]",
            "callbacks.passkey_grid.depths=[0,1]",
            "callbacks.passkey_grid.num_samples=3",
            "callbacks.passkey_grid.batch_size=2",
            "callbacks.passkey_grid.prefill_chunk=16",
            "extras.print_config=false",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert {"test/passkey_acc/len24", "test/passkey_acc/len60", "test/passkey_acc", "test/acc"} <= set(
        metrics
    )
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.startswith("test/passkey_acc"))
    assert (tmp_path / "run" / "passkey_heatmap.png").stat().st_size > 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "test/passkey_heatmap" in events.Tags()["images"]
    assert "pool/pool_fill/layer0" in events.Tags()["scalars"]
