"""Passkey retrieval as a LightningDataModule: endless generated training batches, fixed eval sets."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from memlab.data.arguments import integer_argument, seed_argument
from memlab.data.step_sampler import StepStreamState
from memlab.data.tasks.passkey import MIN_VOCAB, make_passkey, min_passkey_length

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "grid": 3}
# Leads the seed words so these streams never coincide with another memlab numpy stream
# (SeedSequence pads entropy with zeros: (seed, 0, 0) would equal (seed,)).
_STREAM_TAG = 0x5041534B  # "PASK"


def _batch(input_ids: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """int64 [B, L] arrays -> the batch dict, sharing their memory."""
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


class _TrainStream(IterableDataset):
    """Training batches i = start, start + 1, … of one rank; batch b is generated from
    ``(seed, b)`` alone, so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, data: PasskeyDataModule, start_batch: int, rank: int, world_size: int) -> None:
        self.data, self.start_batch, self.rank, self.world_size = data, start_batch, rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        steps: Iterator[int] = itertools.count(self.start_batch)
        worker = get_worker_info()
        if worker is not None:
            # The loader polls its workers in turn, so worker w serving every
            # num_workers-th batch reproduces the single-process order exactly.
            steps = itertools.islice(steps, worker.id, None, worker.num_workers)
        for i in steps:
            b = i * self.world_size + self.rank
            input_ids, labels, _ = self.data.generate("train", b, self.data.batch_size, self.data.seq_len)
            yield _batch(input_ids, labels)


class _EvalBatches(Dataset):
    """A fixed evaluation set cut into batches of ``batch_size`` (the last may be shorter)."""

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.input_ids, self.labels, self.batch_size = input_ids, labels, batch_size

    def __len__(self) -> int:
        return -(-len(self.input_ids) // self.batch_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return _batch(self.input_ids[rows], self.labels[rows])


class PasskeyDataModule(StepStreamState, LightningDataModule):
    """Token-level passkey retrieval (see ``memlab.data.tasks.passkey``), generated from the seed.

    Training batches have random needle depths and are generated on the fly, each from
    ``SeedSequence((seed, split, batch))`` behind a stream tag: the data never repeat, need no
    download or cache, and the train loader (endless; bound the run by ``trainer.max_steps``)
    starts at batch ``global_step · accumulate_grad_batches`` of its rank, so a resumed run
    continues exactly (the checkpoint records that position with the world size and the
    settings the batches depend on; a resume with any of them changed is a ConfigError).
    Validation and test are fixed sets of ``num_val_examples`` / ``num_test_examples`` at the
    training length with random depths (disjoint seeds); the length × depth grid far beyond it
    is the ``PasskeyGrid`` callback's, through ``generate`` (split "grid", one stream per
    (length, depth) cell).

    Batches are dicts of ``input_ids`` and ``labels`` int64 [B, seq_len] (the n answer digits
    labelled, −100 elsewhere), so test/acc is the per-digit accuracy.

    Args:
        vocab_size: V >= 13 (ids 0, 1 are markers, 2..11 digits, the rest filler).
        seq_len: L, the training (and val/test) length.
        needle_len: n, digits in the needle.
        num_val_examples, num_test_examples: sizes of the fixed eval sets.
        batch_size, eval_batch_size: training and evaluation batch sizes.
        seed: the data seed.
        num_workers, pin_memory: DataLoader settings.
    """

    def __init__(
        self,
        vocab_size: int = 64,
        seq_len: int = 256,
        needle_len: int = 5,
        num_val_examples: int = 512,
        num_test_examples: int = 512,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = integer_argument("vocab_size", vocab_size, MIN_VOCAB)
        self.needle_len = integer_argument("needle_len", needle_len, 1)
        self.seq_len = integer_argument("seq_len", seq_len, min_passkey_length(self.needle_len))
        self.num_val_examples = integer_argument("num_val_examples", num_val_examples, 1)
        self.num_test_examples = integer_argument("num_test_examples", num_test_examples, 1)
        self.batch_size = integer_argument("batch_size", batch_size, 1)
        self.eval_batch_size = integer_argument("eval_batch_size", eval_batch_size, 1, self.batch_size)
        self.seed = seed_argument(seed)
        self.num_workers = integer_argument("num_workers", num_workers, 0)
        self.pin_memory = bool(pin_memory)
        self._eval: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._loaded: dict[str, Any] | None = None
        self.save_hyperparameters(logger=False)

    def generate(
        self,
        split: str,
        index: int | tuple[int, ...],
        num_examples: int,
        seq_len: int,
        depth: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Examples ``index`` (an int, or a tuple of them such as a grid cell's) of ``split``
        ("train", "val", "test" or "grid"): ``make_passkey`` from ``SeedSequence((tag, seed,
        split, *index))`` — the same call, the same examples. A split keeps one length of index:
        SeedSequence pads short entropy with zeros, so (i, 0) could repeat (i,)."""
        words = index if isinstance(index, tuple) else (index,)
        rng = np.random.default_rng(
            np.random.SeedSequence([_STREAM_TAG, self.seed, _SPLIT_IDS[split], *words])
        )
        return make_passkey(num_examples, seq_len, self.needle_len, self.vocab_size, depth, rng=rng)

    def train_dataloader(self) -> DataLoader:
        start_batch, rank, world_size = self._training_start()
        return DataLoader(
            _TrainStream(self, start_batch, rank, world_size),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _stream_settings(self) -> dict[str, Any]:
        """The settings the training batches depend on, by the ``data.<key>`` that sets them."""
        keys = ("vocab_size", "seq_len", "needle_len", "batch_size", "seed")
        return {key: getattr(self, key) for key in keys}

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.num_val_examples)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.num_test_examples)

    def _eval_loader(self, split: str, num_examples: int) -> DataLoader:
        if split not in self._eval:
            input_ids, labels, _ = self.generate(split, 0, num_examples, self.seq_len)
            self._eval[split] = (input_ids, labels)
        return DataLoader(
            _EvalBatches(*self._eval[split], self.eval_batch_size),
            batch_size=None,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Validation runs many times per fit; restarting workers each time costs more than it saves.
            persistent_workers=self.num_workers > 0,
        )
