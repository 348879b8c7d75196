"""An endless batch order for step-based training that a resumed run can re-enter exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from memlab.errors import ConfigError

# Leads the seed words so this stream can never coincide with another memlab numpy stream:
# SeedSequence pads entropy with zeros, so e.g. (seed, 0) and (seed, 0, 0) would collide.
_STREAM_TAG = 0x53544550  # "STEP"


class StepBatchSampler(Sampler[list[int]]):
    """Infinite, deterministic batches of dataset indices, each drawn from a single segment.

    The dataset is the concatenation of segments of ``segment_sizes`` examples (segment s
    owns the indices ``[sum(segment_sizes[:s]), sum(segment_sizes[:s + 1]))``); segments may
    differ in sequence length, so a batch never mixes them.

    Global batch ``b`` is a pure function of ``(seed, b)``: epoch ``e`` permutes each
    segment with a generator seeded by ``(seed, e)`` (behind a stream tag), cuts every
    segment into whole batches (the few leftover examples sit that epoch out; the next
    permutation picks others) and shuffles the order of all those batches. Epochs follow
    each other without end, so the sampler has no ``__len__``; stop training by step count.

    Rank ``r`` of ``world_size`` yields global batches ``i * world_size + r`` for
    ``i = start_batch, start_batch + 1, ...``: ranks never share a batch, and a run resumed
    with ``start_batch`` = batches already consumed per rank continues exactly where it
    stopped. Each item is a list of ``batch_size`` indices.
    """

    def __init__(
        self,
        segment_sizes: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in segment_sizes]
        if batch_size < 1:
            raise ValueError(f"StepBatchSampler: batch_size must be >= 1 (got {batch_size})")
        if any(s < 0 for s in sizes):
            raise ValueError(f"StepBatchSampler: segment sizes must be >= 0 (got {sizes})")
        if sum(s // batch_size for s in sizes) == 0:
            raise ValueError(
                f"StepBatchSampler: no segment holds a whole batch of {batch_size} (sizes {sizes})"
            )
        if seed < 0:
            raise ValueError(f"StepBatchSampler: seed must be >= 0 (got {seed})")
        if start_batch < 0:
            raise ValueError(f"StepBatchSampler: start_batch must be >= 0 (got {start_batch})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"StepBatchSampler: need 0 <= rank < world_size (got rank={rank}, world_size={world_size})"
            )
        self.segment_sizes = sizes
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.batches_per_epoch = sum(s // batch_size for s in sizes)
        # Consecutive batches nearly always share an epoch; keep its table instead of redrawing it.
        self._cached_epoch = -1
        self._cached_table = np.empty((0, self.batch_size), dtype=np.int64)

    def global_batch(self, b: int) -> list[int]:
        """Indices of global batch ``b`` (counted from 0 across all ranks)."""
        epoch, position = divmod(b, self.batches_per_epoch)
        return self._epoch_table(epoch)[position].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        i = self.start_batch
        while True:
            yield self.global_batch(i * self.world_size + self.rank)
            i += 1

    def _epoch_table(self, epoch: int) -> np.ndarray:
        """[batches_per_epoch, batch_size] int64: the batches of one epoch, in order."""
        if epoch != self._cached_epoch:
            rng = np.random.default_rng([_STREAM_TAG, self.seed, epoch])
            batches = []
            for offset, size in zip(self.offsets[:-1], self.segment_sizes, strict=True):
                whole = (size // self.batch_size) * self.batch_size
                batches.append((rng.permutation(size)[:whole] + offset).reshape(-1, self.batch_size))
            table = np.concatenate(batches)
            self._cached_table = table[rng.permutation(len(table))]
            self._cached_epoch = epoch
        return self._cached_table


def resume_start(
    saved: dict[str, Any] | None, consumed: int, world_size: int, settings: dict[str, Any]
) -> int:
    """The ``start_batch`` of a training stream resumed from a checkpoint's ``saved`` position
    (``{"consumed", "world_size", "stream"}``, see :func:`saved_position`); ``consumed`` (batches
    per rank before the resume) when there is none. ConfigError if it was saved with another
    world size or with other ``settings`` (the ``data.<key>`` values the batch order depends
    on): the resumed run would not see the batches the uninterrupted one would have."""
    if not saved:
        return consumed
    if saved["world_size"] != world_size:
        raise ConfigError(
            f"data: the checkpoint's stream position is for {saved['world_size']} rank(s); resume "
            f"with the same world size (now {world_size})"
        )
    changed = [
        f"data.{key}={value!r} (now {settings.get(key)!r})"
        for key, value in saved["stream"].items()
        if settings.get(key) != value
    ]
    if changed:
        raise ConfigError(
            f"data: the checkpoint's stream position indexes other data: it was saved with "
            f"{'; '.join(changed)}; resume with the same settings, or start a new run"
        )
    return int(saved["consumed"])


def saved_position(consumed: int, world_size: int, settings: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps of a step-based stream: batches each rank consumed, the world size
    (rank r's next batch follows from both) and the settings the order depends on."""
    return {"consumed": int(consumed), "world_size": int(world_size), "stream": settings}


class StepStreamState:
    """Checkpointing of a step-based training stream, for LightningDataModules (listed before
    LightningDataModule among the bases): ``state_dict`` saves the batches each rank consumed,
    the world size and ``_stream_settings()``; ``load_state_dict`` keeps them, and
    ``_training_start`` gives the next training loader where to resume."""

    _loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position and what it indexes; a resume with another world size
        or other data is refused."""
        trainer = self.trainer
        if trainer is None:
            return {}
        consumed = trainer.global_step * trainer.accumulate_grad_batches
        return saved_position(consumed, trainer.world_size, self._stream_settings())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def _training_start(self) -> tuple[int, int, int]:
        """(start_batch, rank, world_size) of the training loader being built: the batches each
        rank consumed before a resume (checked against the loaded position by ``resume_start``),
        this process's rank and the world size; (0, 0, 1) without a trainer."""
        start_batch, rank, world_size = 0, 0, 1
        if self.trainer is not None:
            # Lightning restores the loop counters from a checkpoint before it asks for this
            # loader, so global_step already counts the optimizer steps taken before the resume.
            start_batch = self.trainer.global_step * self.trainer.accumulate_grad_batches
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
            start_batch = resume_start(self._loaded, start_batch, world_size, self._stream_settings())
        return start_batch, rank, world_size

    def _stream_settings(self) -> dict[str, Any]:
        """The settings the training batch order depends on, by the ``data.<key>`` that sets them."""
        raise NotImplementedError
