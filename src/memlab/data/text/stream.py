"""The training stream: documents sharded over ranks and loader workers, shuffled, tokenized and
packed into batches, each batch carrying the stream position that resumes right after it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from memlab.data.text.packing import Packer, collate_windows
from memlab.data.text.sources import DocumentSource
from memlab.data.text.tokenizer import TextTokenizer
from memlab.errors import ConfigError

# Leads the seed words so these streams never coincide with another memlab numpy stream.
_STREAM_TAG = 0x54455854  # "TEXT"
# Documents tokenized in one call (the Hugging Face tokenizers encode a batch in parallel).
_ENCODE_BATCH = 64
STATE_KEY = "stream_state"


@dataclass(frozen=True)
class Slice:
    """Rows ``first, first + stride, ...`` of one shard of the source (at most ``count`` of them)."""

    shard: int
    first: int
    stride: int
    count: int | None = None


def plan_slices(num_shards: int, stream: int, num_streams: int, holdout: int = 0) -> list[Slice]:
    """The rows stream ``stream`` of ``num_streams`` reads: whole shards dealt round-robin when
    there are at least as many shards as streams, else every stream reads every shard and keeps
    every ``num_streams``-th row. Either way the streams partition the rows, with no duplicate
    and no gap. The first ``holdout`` rows of shard 0 (the validation documents) are left out.
    """
    if num_shards >= num_streams:
        return [Slice(s, holdout if s == 0 else 0, 1) for s in range(stream, num_shards, num_streams)]
    return [Slice(s, (holdout if s == 0 else 0) + stream, num_streams) for s in range(num_shards)]


class DocumentStream:
    """The documents of one stream, epoch after epoch, with their positions.

    Epoch e visits the stream's slices in an order drawn from ``(seed, stream, e)``; inside a
    slice, consecutive blocks of ``shuffle_block`` documents are each permuted by a generator
    drawn from ``(seed, stream, e, slice, block)``. So the order is a pure function of the
    seed and any position ``(epoch, slice, doc)`` can be re-entered by re-reading one block: no
    RNG state or shuffle buffer has to be saved.
    """

    def __init__(
        self,
        source: DocumentSource,
        slices: list[Slice],
        stream: int,
        seed: int,
        shuffle: bool,
        shuffle_block: int,
        epochs: int | None = None,
    ) -> None:
        self.source = source
        self.slices = slices
        self.stream = stream
        self.seed = seed
        self.shuffle = shuffle
        self.block = max(1, int(shuffle_block)) if shuffle else 1
        self.epochs = epochs

    def documents(
        self, start: tuple[int, int, int] = (0, 0, 0)
    ) -> Iterator[tuple[tuple[int, int, int], str]]:
        """Yield ``((epoch, slice, doc), text)`` from position ``start`` on; empty and malformed rows
        are skipped (they keep their positions, so positions stay stable)."""
        first_epoch, first_slice, first_doc = start
        epochs = itertools.count(first_epoch) if self.epochs is None else range(first_epoch, self.epochs)
        for epoch in epochs:
            resumed = epoch == first_epoch
            found = False
            order = self._slice_order(epoch)
            for slice_pos in range(first_slice if resumed else 0, len(order)):
                doc = first_doc if resumed and slice_pos == first_slice else 0
                for ordinal, text in self._slice_documents(epoch, slice_pos, order[slice_pos], doc):
                    if text:
                        found = True
                        yield (epoch, slice_pos, ordinal), text
            whole_epoch = not resumed or start[1:] == (0, 0)
            if not found and whole_epoch and self.epochs is None:
                raise ConfigError(
                    f"data: stream {self.stream} of {self.source.description} has no documents (fewer "
                    "rows than ranks × data.num_workers, or all held out by data.val_documents?)"
                )

    def _slice_order(self, epoch: int) -> list[Slice]:
        if not self.shuffle:
            return self.slices
        rng = np.random.default_rng([_STREAM_TAG, self.seed, self.stream, epoch])
        return [self.slices[i] for i in rng.permutation(len(self.slices))]

    def _slice_documents(
        self, epoch: int, slice_pos: int, part: Slice, start: int
    ) -> Iterator[tuple[int, str | None]]:
        first_block = start // self.block
        rows = self.source.rows(part.shard, part.first + first_block * self.block * part.stride, part.stride)
        if part.count is not None:
            rows = itertools.islice(rows, max(0, part.count - first_block * self.block))
        for block in itertools.count(first_block):
            texts = [text for _, text in itertools.islice(rows, self.block)]
            if not texts:
                return
            order = np.arange(len(texts))
            if self.shuffle and len(texts) > 1:
                rng = np.random.default_rng([_STREAM_TAG, self.seed, self.stream, epoch, slice_pos, block])
                order = rng.permutation(len(texts))
            base = block * self.block
            skip = start - base if block == first_block else 0
            for i in range(skip, len(texts)):
                yield base + i, texts[order[i]]


def packed_windows(
    documents: Iterator[tuple[tuple[int, int, int], str]],
    tokenizer: TextTokenizer,
    size: int,
    count: int,
    offset: int = 0,
) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
    """Group packed runs of ``size`` tokens by ``count``: yield (int32 [count, size], position of the
    first token not yet emitted as ``{epoch, slice, doc, offset}``). ``offset`` tokens of the first
    document were emitted before (resume)."""
    packer = Packer(size, tokenizer.eos_id)
    windows: list[np.ndarray] = []
    while True:
        chunk = list(itertools.islice(documents, _ENCODE_BATCH))
        if not chunk:
            return
        for (key, _), tokens in zip(chunk, tokenizer.encode_batch([t for _, t in chunk]), strict=True):
            packer.add(key, tokens, offset)
            offset = 0
            while packer.ready():
                windows.append(packer.take())
                if len(windows) == count:
                    (epoch, slice_pos, doc), at = packer.position()
                    yield np.stack(windows), {"epoch": epoch, "slice": slice_pos, "doc": doc, "offset": at}
                    windows = []


class PackedStream(IterableDataset):
    """Endless training batches of one rank: ``num_streams`` streams per rank, stream s served by
    DataLoader worker ``(s - rotation) mod num_streams`` (all of them by the main process when
    there are no workers: then num_streams is 1).

    Global stream ``rank · num_streams + s`` reads the rows ``plan_slices`` gives it. The
    DataLoader polls its workers in turn, so the k-th batch comes from local stream
    ``(rotation + k) mod num_streams``; a resumed loader sets ``rotation`` to the number of
    batches consumed before, and ``states`` to where each stream stopped. Each batch (a dict of
    ``collate_windows``) also holds ``stream_state``: ``(local stream, position after it)``.
    """

    def __init__(
        self,
        source: DocumentSource,
        tokenizer: TextTokenizer,
        seq_len: int,
        batch_size: int,
        cu_seqlens: bool,
        seed: int,
        shuffle: bool,
        shuffle_block: int,
        rank: int = 0,
        world_size: int = 1,
        num_streams: int = 1,
        holdout: int = 0,
        rotation: int = 0,
        states: dict[int, dict[str, int]] | None = None,
    ) -> None:
        # held-out rows are counted from the start of the first file: keep that file one shard
        self.source = source.resharded(world_size * num_streams, keep_first=holdout > 0)
        self.tokenizer = tokenizer
        self.seq_len, self.batch_size, self.cu_seqlens = seq_len, batch_size, cu_seqlens
        self.seed, self.shuffle, self.shuffle_block = seed, shuffle, shuffle_block
        self.rank, self.world_size, self.num_streams = rank, world_size, num_streams
        self.holdout = holdout
        self.rotation = rotation
        self.states = dict(states or {})

    def stream_batches(self, local: int, epochs: int | None = None) -> Iterator[dict]:
        """The batches of local stream ``local`` of this rank, from its saved state if any."""
        g = self.rank * self.num_streams + local
        total = self.world_size * self.num_streams
        slices = plan_slices(len(self.source.shards), g, total, self.holdout)
        docs = DocumentStream(self.source, slices, g, self.seed, self.shuffle, self.shuffle_block, epochs)
        state = self.states.get(local)
        start, offset = (
            ((0, 0, 0), 0)
            if state is None
            else ((state["epoch"], state["slice"], state["doc"]), state["offset"])
        )
        for windows, position in packed_windows(
            docs.documents(start), self.tokenizer, self.seq_len + 1, self.batch_size, offset
        ):
            batch = collate_windows(windows, self.tokenizer.eos_id, self.cu_seqlens)
            batch[STATE_KEY] = (local, position)
            yield batch

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers = 1 if worker is None else worker.num_workers
        if workers != self.num_streams:
            raise ValueError(f"PackedStream: built for {self.num_streams} streams, run by {workers} workers")
        local = ((0 if worker is None else worker.id) + self.rotation) % self.num_streams
        return self.stream_batches(local)
