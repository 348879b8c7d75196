"""MQAR generator, StepBatchSampler and MQARDataModule."""

from __future__ import annotations

import itertools
import warnings
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from memlab.data import MQARDataModule, StepBatchSampler
from memlab.data.tasks import IGNORE_INDEX, make_mqar
from memlab.errors import ConfigError

# (seq_len, num_kv_pairs, vocab_size): the tight corner seq_len == 4 * pairs, an odd
# query region, and both subset samplers (few pairs out of many keys / many out of few).
SHAPES = [(64, 4, 8192), (16, 4, 64), (37, 8, 8192), (128, 16, 40), (256, 64, 8192)]


def _kv_prefix(input_ids: np.ndarray, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    return input_ids[:, 0 : 2 * pairs : 2], input_ids[:, 1 : 2 * pairs : 2]


@pytest.mark.parametrize(("seq_len", "pairs", "vocab"), SHAPES)
def test_each_key_is_queried_once_and_labelled_with_its_value(seq_len: int, pairs: int, vocab: int) -> None:
    input_ids, labels = make_mqar(200, seq_len, pairs, vocab, rng=np.random.default_rng(0))
    assert input_ids.shape == labels.shape == (200, seq_len)
    assert input_ids.dtype == labels.dtype == np.int64
    keys, values = _kv_prefix(input_ids, pairs)
    for row in range(200):
        (positions,) = np.nonzero(labels[row] != IGNORE_INDEX)
        assert len(positions) == pairs
        paired = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        queried = input_ids[row, positions].tolist()
        assert sorted(queried) == sorted(paired)
        assert labels[row, positions].tolist() == [paired[k] for k in queried]


@pytest.mark.parametrize(("seq_len", "pairs", "vocab"), SHAPES)
def test_keys_and_values_are_distinct_and_in_their_halves(seq_len: int, pairs: int, vocab: int) -> None:
    input_ids, _ = make_mqar(500, seq_len, pairs, vocab, rng=np.random.default_rng(1))
    keys, values = _kv_prefix(input_ids, pairs)
    assert keys.min() >= 1 and keys.max() < vocab // 2
    assert values.min() >= vocab // 2 and values.max() < vocab
    assert all(len(set(row)) == pairs for row in keys.tolist())
    assert all(len(set(row)) == pairs for row in values.tolist())
    assert input_ids.min() >= 0 and input_ids.max() < vocab


def test_small_populations_are_covered_uniformly() -> None:
    # 15 of the 15 possible keys and 15 of 16 values: every key shows up in every row, and
    # each value is missing from about 1/16 of the rows.
    input_ids, _ = make_mqar(4000, 60, 15, 32, rng=np.random.default_rng(2))
    keys, values = _kv_prefix(input_ids, 15)
    assert (np.sort(keys, axis=1) == np.arange(1, 16)).all()
    counts = np.bincount(values.ravel() - 16, minlength=16)
    np.testing.assert_allclose(counts / 4000, 15 / 16, atol=0.02)
    # The order within the prefix is random too: key 1 lands in each of the 15 slots.
    slot_of_key_one = np.argmax(keys == 1, axis=1)
    np.testing.assert_allclose(np.bincount(slot_of_key_one, minlength=15) / 4000, 1 / 15, atol=0.02)


@pytest.mark.parametrize(("seq_len", "pairs", "vocab"), SHAPES)
def test_queries_sit_at_even_offsets_after_the_prefix(seq_len: int, pairs: int, vocab: int) -> None:
    _, labels = make_mqar(300, seq_len, pairs, vocab, rng=np.random.default_rng(3))
    _, positions = np.nonzero(labels != IGNORE_INDEX)
    assert positions.min() >= 2 * pairs
    assert ((positions - 2 * pairs) % 2 == 0).all()
    assert (labels[:, : 2 * pairs] == IGNORE_INDEX).all()


def test_same_seed_same_examples_other_seed_other_examples() -> None:
    first = make_mqar(50, 64, 4, rng=np.random.default_rng(7))
    again = make_mqar(50, 64, 4, rng=np.random.default_rng(7))
    other = make_mqar(50, 64, 4, rng=np.random.default_rng(8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


def _query_gaps(input_ids: np.ndarray, labels: np.ndarray, pairs: int) -> np.ndarray:
    """[n, pairs] gap index (query offset / 2) of each key, in prefix order."""
    keys, _ = _kv_prefix(input_ids, pairs)
    rows, positions = np.nonzero(labels != IGNORE_INDEX)
    slots = np.argmax(keys[rows] == input_ids[rows, positions][:, None], axis=1)
    gaps = np.empty_like(keys)
    gaps[rows, slots] = (positions - 2 * pairs) // 2
    return gaps


def test_query_gaps_follow_the_power_law() -> None:
    seq_len, pairs, slots, n = 512, 16, 240, 20_000
    weights = np.arange(1, slots + 1) ** (0.01 - 1)
    weights /= weights.sum()
    gaps = _query_gaps(*make_mqar(n, seq_len, pairs, rng=np.random.default_rng(4)), pairs)
    # The first key's gap is the first draw, so it follows p(i) ∝ i^(a-1) exactly.
    assert abs((gaps[:, 0] == 0).mean() - weights[0]) < 0.015
    assert abs((gaps[:, 0] < 10).mean() - weights[:10].sum()) < 0.02
    # Queries cluster early: uniform gaps (a = 1) average (slots - 1) / 2.
    uniform_mean = (slots - 1) / 2
    assert gaps.mean() < 0.6 * uniform_mean
    flat = _query_gaps(*make_mqar(n, seq_len, pairs, power_a=1.0, rng=np.random.default_rng(5)), pairs)
    assert abs(flat.mean() - uniform_mean) < 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seq_len=256, num_kv_pairs=80), r"num_kv_pairs=80 needs seq_len >= 320 \(got 256\)"),
        (
            dict(seq_len=64, num_kv_pairs=8, vocab_size=16),
            r"num_kv_pairs=8 needs vocab_size >= 18 \(got 16\)",
        ),
        (dict(seq_len=64, num_kv_pairs=0), r"num_kv_pairs must be >= 1"),
        (dict(seq_len=64, num_kv_pairs=4, power_a=0.0), r"power_a must be a finite number > 0"),
    ],
)
def test_generator_refuses_impossible_sizes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_mqar(4, rng=np.random.default_rng(0), **kwargs)


# ---------------------------------------------------------------- StepBatchSampler


def _take(sampler: StepBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(sampler, n))


SIZES = [37, 0, 64, 21]


def test_sampler_is_deterministic_and_seeded() -> None:
    a = _take(StepBatchSampler(SIZES, 8, seed=3), 50)
    assert a == _take(StepBatchSampler(SIZES, 8, seed=3), 50)
    assert a != _take(StepBatchSampler(SIZES, 8, seed=4), 50)
    assert a == [StepBatchSampler(SIZES, 8, seed=3).global_batch(b) for b in range(50)]


def test_sampler_resumes_exactly_from_start_batch() -> None:
    full = _take(StepBatchSampler(SIZES, 8, seed=1), 60)
    for k in (0, 1, 13, 14, 41):
        assert _take(StepBatchSampler(SIZES, 8, seed=1, start_batch=k), 60 - k) == full[k:]


def test_sampler_batches_are_homogeneous_and_epochs_cover_each_example_at_most_once() -> None:
    sampler = StepBatchSampler(SIZES, 8, seed=0)
    per_epoch = sampler.batches_per_epoch
    assert per_epoch == 4 + 0 + 8 + 2
    segment_of = np.repeat(np.arange(len(SIZES)), SIZES)
    batches = _take(sampler, 3 * per_epoch)
    for batch in batches:
        assert len(batch) == 8
        assert len(set(segment_of[batch])) == 1
    for epoch in range(3):
        seen = np.concatenate(batches[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert len(np.unique(seen)) == len(seen) == per_epoch * 8
        assert np.bincount(segment_of[seen], minlength=4).tolist() == [32, 0, 64, 16]
    # Later epochs reshuffle which examples sit out and the order of the batches.
    assert batches[:per_epoch] != batches[per_epoch : 2 * per_epoch]


def test_sampler_ranks_split_the_global_sequence_without_overlap() -> None:
    world, steps = 3, 20
    global_order = _take(StepBatchSampler(SIZES, 8, seed=2), world * steps)
    shards = [
        _take(StepBatchSampler(SIZES, 8, seed=2, rank=r, world_size=world), steps) for r in range(world)
    ]
    for r, shard in enumerate(shards):
        assert shard == global_order[r::world]
    interleaved = [batch for step in zip(*shards, strict=True) for batch in step]
    assert interleaved == global_order
    # A resumed rank picks up its own shard where it left off.
    resumed = _take(StepBatchSampler(SIZES, 8, seed=2, rank=1, world_size=world, start_batch=5), steps - 5)
    assert resumed == shards[1][5:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(segment_sizes=[10], batch_size=0), "batch_size must be >= 1"),
        (dict(segment_sizes=[7, 3], batch_size=8), "no segment holds a whole batch"),
        (dict(segment_sizes=[16], batch_size=8, rank=2, world_size=2), "0 <= rank < world_size"),
        (dict(segment_sizes=[16], batch_size=8, start_batch=-1), "start_batch must be >= 0"),
    ],
)
def test_sampler_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepBatchSampler(**kwargs)


# ---------------------------------------------------------------- MQARDataModule

TRAIN = [
    {"seq_len": 16, "num_kv_pairs": 2, "num_examples": 40},
    {"seq_len": 32, "num_kv_pairs": 4, "num_examples": 24},
]
VAL = [
    {"seq_len": 16, "num_kv_pairs": 2, "num_examples": 10},
    {"seq_len": 64, "num_kv_pairs": 8, "num_examples": 7},
]


def _datamodule(**overrides) -> MQARDataModule:
    kwargs = dict(vocab_size=64, train_segments=TRAIN, val_segments=VAL, batch_size=4, eval_batch_size=3)
    return MQARDataModule(**{**kwargs, **overrides})


def _check_batch(batch: dict[str, torch.Tensor], batch_size: int) -> None:
    assert set(batch) == {"input_ids", "labels", "num_kv_pairs"}
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["input_ids"].shape[0] == batch["num_kv_pairs"].shape[0] == batch_size
    pairs = int(batch["num_kv_pairs"][0])
    assert (batch["num_kv_pairs"] == pairs).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) == pairs).all()
    assert batch["input_ids"].shape[1] == {2: 16, 4: 32, 8: 64}[pairs]


def test_datamodule_batches_have_the_documented_keys_shapes_and_dtypes() -> None:
    dm = _datamodule()
    dm.setup()
    assert dm.vocab_size == 64
    for batch in itertools.islice(dm.train_dataloader(), 30):
        _check_batch(batch, 4)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batches = list(loader)
        sizes = [len(b["input_ids"]) for b in batches]
        assert sizes == [3, 3, 3, 1, 3, 3, 1]  # every example once, segment by segment
        for batch, size in zip(batches, sizes, strict=True):
            _check_batch(batch, size)


def test_train_loader_is_identical_with_and_without_workers() -> None:
    serial = list(itertools.islice(_datamodule(num_workers=0).train_dataloader(), 25))
    parallel = list(itertools.islice(_datamodule(num_workers=2).train_dataloader(), 25))
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def _rows(loader) -> set[bytes]:
    return {row.numpy().tobytes() for batch in loader for row in batch["input_ids"]}


def test_splits_are_reproducible_and_disjoint() -> None:
    dm = _datamodule()
    train = _rows(itertools.islice(dm.train_dataloader(), 16))
    val, test = _rows(dm.val_dataloader()), _rows(dm.test_dataloader())
    assert len(train) == 4 * 16 and len(val) == len(test) == 17
    assert not (train & val) and not (train & test) and not (val & test)
    assert val == _rows(_datamodule().val_dataloader())
    assert val != _rows(_datamodule(seed=1).val_dataloader())


def test_train_loader_starts_where_the_attached_trainer_left_off() -> None:
    dm = _datamodule()
    dm.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=2, global_rank=1, world_size=2)
    reference = StepBatchSampler([40, 24], 4, seed=0)
    first = next(iter(dm.train_dataloader()))
    index = reference.global_batch((3 * 2) * 2 + 1)
    segment, offset = (0, 0) if index[0] < 40 else (1, 40)
    expected = dm._split("train")[segment].input_ids[np.asarray(index) - offset]
    np.testing.assert_array_equal(first["input_ids"].numpy(), expected)


class _Recorder(L.LightningModule):
    """Remembers every training batch; the smallest model that lets Lightning step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 4)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["input_ids"])
        return self.embed(batch["input_ids"]).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(steps: int, tmp_path, ckpt_path=None, checkpoint_every: int | None = None) -> _Recorder:
    callbacks = []
    if checkpoint_every is not None:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=tmp_path, every_n_train_steps=checkpoint_every, save_top_k=-1
            )
        )
    trainer = L.Trainer(
        max_steps=steps,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    model = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=_datamodule(), ckpt_path=ckpt_path)
    return model


def test_resumed_fit_sees_the_batches_of_an_uninterrupted_one(tmp_path) -> None:
    uninterrupted = _fit(6, tmp_path, checkpoint_every=3)
    resumed = _fit(6, tmp_path, ckpt_path=next(tmp_path.glob("*step=3*.ckpt")))
    assert len(uninterrupted.seen) == 12 and len(resumed.seen) == 6
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.seen[6:], resumed.seen, strict=True))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(train_segments=[{"seq_len": 256, "num_kv_pairs": 80, "num_examples": 100}], vocab_size=8192),
            r"data.train_segments\[0\]: num_kv_pairs=80 needs seq_len >= 320 \(got 256\)",
        ),
        (
            dict(val_segments=[{"seq_len": 64, "num_kv_pairs": 16, "num_examples": 5}], vocab_size=20),
            r"data.val_segments\[0\]: num_kv_pairs=16 needs data.vocab_size >= 34 \(got 20\)",
        ),
        (dict(batch_size=0), r"data.batch_size must be >= 1 \(got 0\)"),
        (dict(batch_size=41), r"data.train_segments\[0\]: num_examples=40 must be >= data.batch_size=41"),
        (dict(vocab_size=2), r"data.vocab_size must be >= 4"),
        (dict(seed=-1), r"data.seed must be >= 0"),
        (dict(power_a=-0.5), r"data.power_a must be a finite number > 0"),
        (dict(eval_batch_size="8"), r"data.eval_batch_size: expected an integer >= 1 \(got '8'\)"),
        (dict(test_segments=[]), r"data.test_segments: expected a non-empty list"),
        (dict(train_segments=[[16, 2, 40]]), r"data.train_segments\[0\]: expected a mapping with exactly"),
        (
            dict(train_segments=[{"seq_len": 16, "pairs": 2, "num_examples": 40}]),
            r"keys seq_len, num_kv_pairs, num_examples",
        ),
        (
            dict(train_segments=[{"seq_len": 16.5, "num_kv_pairs": 2, "num_examples": 40}]),
            r"data.train_segments\[0\].seq_len: expected an integer >= 1",
        ),
    ],
)
def test_datamodule_refuses_bad_configuration_with_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _datamodule(**overrides)
    assert "\n" not in str(caught.value)


def test_datamodule_accepts_omegaconf_containers() -> None:
    cfg = OmegaConf.create({"train": TRAIN, "val": VAL})
    dm = _datamodule(train_segments=cfg.train, val_segments=cfg.val)
    plain = _datamodule()
    assert [s.seq_len for s in dm.segments["test"]] == [16, 64]
    for a, b in zip(dm.val_dataloader(), plain.val_dataloader(), strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
