"""Where a rank's training streams stand, for exact resume: the position of every stream after
the last batch whose optimizer step completed (not after the batches the loader has read ahead)."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch.distributed as dist

from memlab.data.text.stream import STATE_KEY
from memlab.errors import ConfigError


class StreamPositions:
    """A rank's training positions: ``consumed`` batches trained on, ``states`` {stream: position}
    after them, and the positions of batches handed to training whose step has not completed."""

    def __init__(self) -> None:
        self.consumed = 0
        self.states: dict[int, dict[str, int]] = {}
        self._pending: deque[tuple[int, dict[str, int]]] = deque()

    def start(
        self, saved: dict[str, Any] | None, rank: int, world_size: int, num_streams: int, settings: dict
    ) -> None:
        """Begin a training run, from the positions of a checkpoint's ``saved`` state if any;
        ConfigError if they were saved for other ranks, streams or ``settings`` (what they index)."""
        self.consumed, self.states = _resume(saved, rank, world_size, num_streams, settings)
        self._pending.clear()

    def note(self, batch: Any) -> Any:
        """Take the position a training batch carries (STATE_KEY) off it and keep it pending."""
        if isinstance(batch, dict) and STATE_KEY in batch:
            local, position = batch.pop(STATE_KEY)
            self._pending.append((int(local), dict(position)))
        return batch

    def commit(self, trained: int | None) -> None:
        """Count the pending positions of the first ``trained`` batches (all pending when None):
        a checkpoint written in the middle of a step must resume at that step's first batch."""
        trained = self.consumed + len(self._pending) if trained is None else trained
        while self.consumed < trained and self._pending:
            local, position = self._pending.popleft()
            self.states[local] = position
            self.consumed += 1

    def all_ranks(self, num_streams: int) -> list[dict[str, Any]]:
        """This rank's positions, gathered from every rank under DDP."""
        mine = {"consumed": self.consumed, "num_streams": num_streams, "states": dict(self.states)}
        ranks = [mine]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return ranks


def _resume(
    saved: dict[str, Any] | None, rank: int, world_size: int, num_streams: int, now: dict
) -> tuple[int, dict[int, dict[str, int]]]:
    if not saved:
        return 0, {}
    ranks = saved["ranks"]
    mine = ranks[rank] if len(ranks) == world_size else None
    if mine is None or mine["num_streams"] != num_streams:
        saved_workers = "?" if mine is None else mine["num_streams"]
        raise ConfigError(
            f"data: the checkpoint's stream positions are for {len(ranks)} rank(s) × {saved_workers} "
            f"stream(s); resume with the same world size and data.num_workers (now {world_size} × "
            f"{num_streams})"
        )
    # checkpoints written before the settings were recorded have no "stream" entry
    changed = [
        f"data.{key}={value!r} (now {now[key]!r})"
        for key, value in saved.get("stream", {}).items()
        if now.get(key) != value
    ]
    if changed:
        raise ConfigError(
            f"data: the checkpoint's stream positions index other data: it was saved with "
            f"{'; '.join(changed)}; resume with the same settings, or start a new run"
        )
    return int(mine["consumed"]), {int(k): dict(v) for k, v in mine["states"].items()}
