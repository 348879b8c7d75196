"""Streamed text corpora (Hub datasets or local files) as a LightningDataModule with exact resume."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from memlab.data.arguments import integer_argument
from memlab.data.labels import IGNORE_INDEX
from memlab.data.text.packing import Packer, collate_windows
from memlab.data.text.positions import StreamPositions
from memlab.data.text.sources import DocumentSource, open_files, open_hub
from memlab.data.text.stream import DocumentStream, PackedStream, Slice
from memlab.data.text.tokenizer import TextTokenizer, load_tokenizer
from memlab.data.text.worker_signals import exit_on_parents_sigterm_only
from memlab.errors import ConfigError

_SAMPLE_BY = ("document", "paragraph", "line")


def _check_source(path: str | None, files: str | Sequence[str] | None, sample_by: str) -> None:
    """ConfigError unless the documents come from exactly one of a Hub dataset (``path``) and
    local ``files``, sampled by one of _SAMPLE_BY."""
    if (path is None) == (files is None):
        raise ConfigError("data: set exactly one of data.path (a Hub dataset) and data.files (local files)")
    if sample_by not in _SAMPLE_BY:
        raise ConfigError(f"data.sample_by must be one of {', '.join(_SAMPLE_BY)} (got {sample_by!r})")


class TextDataModule(LightningDataModule):
    """Language-modelling batches streamed from a Hub dataset (``path``) or local files (``files``).

    Documents are read with ``datasets`` (``streaming=True``), tokenized on the fly by
    ``tokenizer`` (``bytes``, a tokenizer.json, a folder or a Hub name) and packed into
    non-overlapping windows of ``seq_len + 1`` tokens, each document followed by end-of-text.
    Batches are ``input_ids`` / ``labels`` int64 [batch_size, seq_len]; with ``cu_seqlens``
    they are packed along time instead ([1, batch_size · seq_len] plus ``cu_seqlens`` int32
    [N+1] at every window and document start), so the model resets its state at documents.

    Training is endless and step-based. Each rank runs ``max(1, num_workers)`` streams, one per
    loader worker, over disjoint rows of the source (``stream.plan_slices``), shuffled with
    ``seed`` (shard order per epoch, documents in blocks of ``shuffle_block``). The position of
    every stream after the last batch whose optimizer step completed (epoch, shard, document,
    token offset; the order is a function of the seed, so no RNG state is needed) goes into the
    checkpoint (``state_dict``) — also when it is written in the middle of a step, on an
    exception or a signal — so a resumed run sees exactly the batches an uninterrupted one would.
    The checkpoint also records what those positions index (files or dataset, seed, shuffling,
    tokenizer, held-out documents, world size and ``num_workers``); resuming with any of them
    changed is a ConfigError.

    Validation uses ``val_split`` / ``val_files`` if given, else the first ``val_documents``
    documents of the training data's first shard, which training then skips; test uses
    ``test_split`` / ``test_files``, else the validation documents. Either is the first
    ``val_windows`` windows of its documents in order (a last partial window is padded, its
    padding labelled -100).
    """

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        revision: str | None = None,
        split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        files: str | Sequence[str] | None = None,
        val_files: str | Sequence[str] | None = None,
        test_files: str | Sequence[str] | None = None,
        text_field: str = "text",
        sample_by: str = "document",
        tokenizer: str = "bytes",
        eos_token: str | None = None,
        vocab_size: int = 257,
        seq_len: int = 512,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_windows: int = 32,
        val_documents: int = 64,
        cu_seqlens: bool = False,
        shuffle: bool = True,
        shuffle_block: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        _check_source(path, files, sample_by)
        self.path, self.name, self.revision = path, name, revision
        self.splits = {"train": split, "val": val_split, "test": test_split}
        self.files = {"train": files, "val": val_files, "test": test_files}
        self.text_field, self.sample_by = text_field, sample_by
        self.tokenizer_spec, self.eos_token = tokenizer, eos_token
        self.vocab_size = integer_argument("vocab_size", vocab_size, 2)
        self.seq_len = integer_argument("seq_len", seq_len, 1)
        self.batch_size = integer_argument("batch_size", batch_size, 1)
        self.eval_batch_size = integer_argument("eval_batch_size", eval_batch_size, 1, self.batch_size)
        self.val_windows = integer_argument("val_windows", val_windows, 1)
        self.val_documents = integer_argument("val_documents", val_documents, 1)
        self.cu_seqlens, self.shuffle = bool(cu_seqlens), bool(shuffle)
        self.shuffle_block = integer_argument("shuffle_block", shuffle_block, 1)
        self.seed = integer_argument("seed", seed, 0)
        self.num_workers = integer_argument("num_workers", num_workers, 0)
        self.pin_memory = bool(pin_memory)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._tokenizer: TextTokenizer | None = None
        self._sources: dict[str, DocumentSource] = {}
        self._eval: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._loaded: dict[str, Any] | None = None
        self._positions = StreamPositions()
        self._training = False
        self.save_hyperparameters(logger=False)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer named by ``tokenizer``, loaded once; its vocabulary must fit ``vocab_size``."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.tokenizer_spec, self.eos_token, self._cache("tokenizers"))
            if tokenizer.vocab_size > self.vocab_size:
                raise ConfigError(
                    f"data.vocab_size={self.vocab_size} is smaller than the vocabulary of tokenizer "
                    f"{tokenizer.name} ({tokenizer.vocab_size}); set data.vocab_size={tokenizer.vocab_size}"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def source(self, split: str) -> DocumentSource:
        """The documents of ``train``, ``val`` or ``test`` (held-out training documents when the
        split has no source of its own)."""
        key = self._source_key(split)
        if key not in self._sources:
            if self.files["train"] is not None:
                files_key = "files" if key == "train" else f"{key}_files"
                self._sources[key] = open_files(self.files[key], files_key, self.text_field, self.sample_by)
            else:
                self._sources[key] = open_hub(
                    self.path,
                    self.name,
                    self.splits[key],
                    self.revision,
                    self.text_field,
                    self._cache("datasets"),
                )
        return self._sources[key]

    def _source_key(self, split: str) -> str:
        own = self.files if self.files["train"] is not None else self.splits
        if split == "test" and own["test"] is None:
            split = "val"
        return split if own[split] is not None else "train"

    @property
    def holdout(self) -> int:
        """Documents at the start of the first training shard kept for validation (0 if val has its own)."""
        return self.val_documents if self._source_key("val") == "train" else 0

    def _cache(self, kind: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / kind

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and open the sources in the main process, so that a missing file,
        dataset or tokenizer fails here, with one line, before any worker starts."""
        _ = self.tokenizer
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in splits:
            self.source(split)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        num_streams = max(1, self.num_workers)
        self._positions.start(self._loaded, rank, world_size, num_streams, self._stream_settings())
        self._training = True
        if self.num_workers > 0:
            # The tokenizer was already used in this process (evaluation windows); its thread pool
            # cannot survive the fork into workers, which then tokenize single-threaded anyway.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        stream = PackedStream(
            self.source("train"),
            self.tokenizer,
            self.seq_len,
            self.batch_size,
            self.cu_seqlens,
            self.seed,
            self.shuffle,
            self.shuffle_block,
            rank=rank,
            world_size=world_size,
            num_streams=num_streams,
            holdout=self.holdout,
            rotation=self._positions.consumed % num_streams,
            states=self._positions.states,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=exit_on_parents_sigterm_only if self.num_workers else None,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        key = self._source_key(split)
        if key not in self._eval:
            self._eval[key] = self.eval_batches(key)
        return DataLoader(self._eval[key], batch_size=None, shuffle=False, pin_memory=self.pin_memory)

    def eval_documents(self, split: str) -> Iterator[tuple[tuple[int, int, int], str]]:
        """The documents of ``val`` or ``test``, in order, with their positions (the held-out
        training documents when the split has no source of its own)."""
        key = self._source_key(split)
        source = self.source(key)
        if key == "train":
            slices = [Slice(0, 0, 1, self.val_documents)]
        else:
            slices = [Slice(s, 0, 1) for s in range(len(source.shards))]
        return DocumentStream(source, slices, 0, self.seed, False, 1, epochs=1).documents()

    def eval_batches(self, split: str) -> list[dict[str, torch.Tensor]]:
        """The first ``val_windows`` windows of a split's documents, in order, as batches."""
        docs = self.eval_documents(split)
        size = self.seq_len + 1
        packer = Packer(size, self.tokenizer.eos_id)
        windows: list[np.ndarray] = []
        while len(windows) < self.val_windows:
            doc = next(docs, None)
            if doc is None:
                break
            packer.add(doc[0], self.tokenizer.encode_batch([doc[1]])[0])
            while packer.ready() and len(windows) < self.val_windows:
                windows.append(packer.take())
        lengths = [size] * len(windows)
        rest = packer.leftover()
        if len(windows) < self.val_windows and len(rest) > 1:
            windows.append(np.concatenate([rest, np.full(size - len(rest), self.tokenizer.eos_id, np.int32)]))
            lengths.append(len(rest))
        if not windows:
            raise ConfigError(f"data: the {split} documents of {self.source(split).description} hold no text")
        batches = []
        for start in range(0, len(windows), self.eval_batch_size):
            chunk = np.stack(windows[start : start + self.eval_batch_size])
            valid = torch.tensor(lengths[start : start + self.eval_batch_size]) - 1
            batch = collate_windows(chunk, self.tokenizer.eos_id, self.cu_seqlens)
            # labels[:, t] is token t + 1 of the window: padding from position valid on
            pad = torch.arange(self.seq_len)[None, :] >= valid[:, None]
            batch["labels"] = batch["labels"].masked_fill(pad.reshape(batch["labels"].shape), IGNORE_INDEX)
            batches.append(batch)
        return batches

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note where the stream that made this batch stands, now that training takes it (the
        loader runs ahead of training, so its own position would be too far); the position
        counts once the batch's optimizer step completes (``state_dict``)."""
        return self._positions.note(batch)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream positions after the batches whose optimizer step completed
        (gathered from all ranks under DDP; rank 0 writes them) and what they index (``stream``)."""
        if not self._training:
            return {}
        trainer = self.trainer
        self._positions.commit(
            None if trainer is None else trainer.global_step * trainer.accumulate_grad_batches
        )
        return {
            "ranks": self._positions.all_ranks(max(1, self.num_workers)),
            "stream": self._stream_settings(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def _stream_settings(self) -> dict[str, Any]:
        """The settings a saved position is an index into, by the ``data.<key>`` that sets them."""
        if self.files["train"] is not None:
            where = {"files": [Path(part.label).name for part in self.source("train").parts]}
        else:
            where = {
                "path": self.path,
                "name": self.name,
                "split": self.splits["train"],
                "revision": self.revision,
            }
        return {
            **where,
            "text_field": self.text_field,
            "sample_by": self.sample_by,
            "tokenizer": self.tokenizer_spec,
            "eos_token": self.eos_token,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_block": self.shuffle_block,
            "val_documents": self.holdout,
        }
