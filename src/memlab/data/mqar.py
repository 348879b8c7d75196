"""MQAR as a LightningDataModule: every split generated in memory from the seed."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from memlab.data.arguments import integer_argument, seed_argument
from memlab.data.step_sampler import StepBatchSampler, StepStreamState
from memlab.data.tasks.mqar import make_mqar
from memlab.errors import ConfigError

# The standard MQAR grid (docs/tasks.md), at Zoology's example counts.
DEFAULT_TRAIN_SEGMENTS: tuple[dict[str, int], ...] = (
    {"seq_len": 64, "num_kv_pairs": 4, "num_examples": 100_000},
    {"seq_len": 128, "num_kv_pairs": 8, "num_examples": 20_000},
    {"seq_len": 256, "num_kv_pairs": 16, "num_examples": 20_000},
    {"seq_len": 512, "num_kv_pairs": 64, "num_examples": 20_000},
)
DEFAULT_VAL_SEGMENTS: tuple[dict[str, int], ...] = tuple(
    {**segment, "num_examples": 1_000} for segment in DEFAULT_TRAIN_SEGMENTS
)

_SEGMENT_KEYS = ("seq_len", "num_kv_pairs", "num_examples")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
# Leads the seed words so these streams never coincide with another memlab numpy stream
# (SeedSequence pads entropy with zeros: (seed, 0, 0) would equal (seed,)).
_STREAM_TAG = 0x4D514152  # "MQAR"


@dataclass(frozen=True)
class SegmentSpec:
    """One block of examples sharing a sequence length and a number of pairs."""

    seq_len: int
    num_kv_pairs: int
    num_examples: int


@dataclass(frozen=True)
class _Segment:
    """Generated examples of one segment; int32 [num_examples, seq_len] halves the memory of
    large training sets, and batches are widened to int64 on the way out."""

    num_kv_pairs: int
    input_ids: np.ndarray
    labels: np.ndarray


def _collate(segment: _Segment, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
    input_ids = torch.from_numpy(segment.input_ids[rows]).long()
    return {
        "input_ids": input_ids,
        "labels": torch.from_numpy(segment.labels[rows]).long(),
        "num_kv_pairs": torch.full((input_ids.shape[0],), segment.num_kv_pairs, dtype=torch.int64),
    }


class _StepBatchStream(IterableDataset):
    """The endless training stream: one collated batch per item, in StepBatchSampler order.

    An iterable dataset rather than a ``batch_sampler``, so Lightning never tries to inject a
    DistributedSampler under DDP; the sampler already shards by rank.
    """

    def __init__(self, segments: Sequence[_Segment], sampler: StepBatchSampler) -> None:
        self.segments = list(segments)
        self.sampler = sampler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches: Iterator[list[int]] = iter(self.sampler)
        worker = get_worker_info()
        if worker is not None:
            # The loader polls its workers in turn, so worker w serving every
            # num_workers-th batch reproduces the single-process order exactly.
            batches = itertools.islice(batches, worker.id, None, worker.num_workers)
        offsets = self.sampler.offsets
        for indices in batches:
            index = np.asarray(indices, dtype=np.int64)
            s = int(np.searchsorted(offsets, index[0], side="right")) - 1
            yield _collate(self.segments[s], index - offsets[s])


class _SequentialBatches(Dataset):
    """Evaluation batches: each segment in order, cut into runs of ``batch_size`` examples
    (the last run of a segment may be shorter), one collated batch per item."""

    def __init__(self, segments: Sequence[_Segment], batch_size: int) -> None:
        self.segments = list(segments)
        self.spans = [
            (s, start, min(start + batch_size, len(segment.input_ids)))
            for s, segment in enumerate(self.segments)
            for start in range(0, len(segment.input_ids), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, start, stop = self.spans[i]
        return _collate(self.segments[s], slice(start, stop))


class MQARDataModule(StepStreamState, LightningDataModule):
    """Multi-query associative recall, generated in memory (see ``memlab.data.tasks.mqar``).

    Each split is a list of segments ``{seq_len, num_kv_pairs, num_examples}``; segment i of
    a split is generated from ``SeedSequence((seed, split, i))`` (behind a stream tag), so
    train, val and test are independent and every process rebuilds identical data without
    any download or cache.

    Batches are dicts of ``input_ids`` int64 [B, L], ``labels`` int64 [B, L] (aligned
    next-token targets, -100 outside the query positions) and ``num_kv_pairs`` int64 [B];
    a batch never mixes segments, so L is one segment's ``seq_len``.

    Training is step-based: the train loader is endless (no length; bound the run with
    ``trainer.max_steps``) and starts at batch ``global_step * accumulate_grad_batches`` of
    its rank, so a run resumed from a checkpoint sees exactly the batches an uninterrupted
    run would; the checkpoint records that position with the world size and the settings the
    order depends on, and a resume with any of them changed is a ConfigError. Validation and
    test loaders walk every example once, segment by segment.
    ``test_segments`` defaults to ``val_segments`` (with its own, disjoint seed).
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        train_segments: Sequence[Mapping[str, int]] = DEFAULT_TRAIN_SEGMENTS,
        val_segments: Sequence[Mapping[str, int]] = DEFAULT_VAL_SEGMENTS,
        test_segments: Sequence[Mapping[str, int]] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        power_a: float = 0.01,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = integer_argument("vocab_size", vocab_size, minimum=4)
        self.batch_size = integer_argument("batch_size", batch_size, minimum=1)
        self.eval_batch_size = integer_argument("eval_batch_size", eval_batch_size, 1, self.batch_size)
        self.seed = seed_argument(seed)
        if not isinstance(power_a, numbers.Real) or isinstance(power_a, bool) or not 0 < power_a < math.inf:
            raise ConfigError(f"data.power_a must be a finite number > 0 (got {power_a!r})")
        self.power_a = float(power_a)
        self.num_workers = integer_argument("num_workers", num_workers, minimum=0)
        self.pin_memory = bool(pin_memory)
        self.segments: dict[str, list[SegmentSpec]] = {
            "train": self._segments("train_segments", train_segments),
            "val": self._segments("val_segments", val_segments),
            "test": self._segments(
                "test_segments" if test_segments is not None else "val_segments",
                val_segments if test_segments is None else test_segments,
            ),
        }
        for i, spec in enumerate(self.segments["train"]):
            if spec.num_examples < self.batch_size:
                raise ConfigError(
                    f"data.train_segments[{i}]: num_examples={spec.num_examples} must be >= "
                    f"data.batch_size={self.batch_size}, or the segment never fills a batch"
                )
        self._data: dict[str, list[_Segment]] = {}
        self._loaded: dict[str, Any] | None = None
        self.save_hyperparameters(
            {
                "vocab_size": self.vocab_size,
                **{f"{split}_segments": [vars(s) for s in specs] for split, specs in self.segments.items()},
                "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size,
                "seed": self.seed,
                "power_a": self.power_a,
                "num_workers": self.num_workers,
                "pin_memory": self.pin_memory,
            },
            logger=False,
        )

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits ``stage`` needs (all of them for ``None``); idempotent."""
        for split in _STAGE_SPLITS.get(stage or "", tuple(_SPLIT_IDS)):
            self._split(split)

    def train_dataloader(self) -> DataLoader:
        start_batch, rank, world_size = self._training_start()
        segments = self._split("train")
        sampler = StepBatchSampler(
            [len(s.input_ids) for s in segments],
            self.batch_size,
            seed=self.seed,
            start_batch=start_batch,
            rank=rank,
            world_size=world_size,
        )
        return DataLoader(
            _StepBatchStream(segments, sampler),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _stream_settings(self) -> dict[str, Any]:
        """The settings the training batch order depends on, by the ``data.<key>`` that sets them."""
        return {
            "train_segments": [vars(s) for s in self.segments["train"]],
            "batch_size": self.batch_size,
            "vocab_size": self.vocab_size,
            "seed": self.seed,
            "power_a": self.power_a,
        }

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            _SequentialBatches(self._split(split), self.eval_batch_size),
            batch_size=None,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Validation runs many times per fit; restarting workers each time costs more than it saves.
            persistent_workers=self.num_workers > 0,
        )

    def _split(self, split: str) -> list[_Segment]:
        if split not in self._data:
            self._data[split] = [
                self._generate(split, i, spec) for i, spec in enumerate(self.segments[split])
            ]
        return self._data[split]

    def _generate(self, split: str, index: int, spec: SegmentSpec) -> _Segment:
        rng = np.random.default_rng(
            np.random.SeedSequence([_STREAM_TAG, self.seed, _SPLIT_IDS[split], index])
        )
        input_ids, labels = make_mqar(
            spec.num_examples, spec.seq_len, spec.num_kv_pairs, self.vocab_size, self.power_a, rng=rng
        )
        return _Segment(spec.num_kv_pairs, input_ids.astype(np.int32), labels.astype(np.int32))

    def _segments(self, key: str, value: Any) -> list[SegmentSpec]:
        shape = "a non-empty list of {seq_len, num_kv_pairs, num_examples}"
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
            raise ConfigError(f"data.{key}: expected {shape} (got {value!r})")
        specs = []
        for i, segment in enumerate(value):
            where = f"data.{key}[{i}]"
            if not isinstance(segment, Mapping) or set(segment) != set(_SEGMENT_KEYS):
                raise ConfigError(
                    f"{where}: expected a mapping with exactly the keys {', '.join(_SEGMENT_KEYS)} "
                    f"(got {segment!r})"
                )
            spec = SegmentSpec(
                **{k: integer_argument(f"{key}[{i}].{k}", segment[k], minimum=1) for k in _SEGMENT_KEYS}
            )
            if spec.seq_len < 4 * spec.num_kv_pairs:
                raise ConfigError(
                    f"{where}: num_kv_pairs={spec.num_kv_pairs} needs seq_len >= {4 * spec.num_kv_pairs} "
                    f"(got {spec.seq_len})"
                )
            if self.vocab_size < 2 * spec.num_kv_pairs + 2:
                raise ConfigError(
                    f"{where}: num_kv_pairs={spec.num_kv_pairs} needs data.vocab_size >= "
                    f"{2 * spec.num_kv_pairs + 2} (got {self.vocab_size})"
                )
            specs.append(spec)
        return specs
