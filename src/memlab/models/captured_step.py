"""The one-token decoding step of a language model, captured once in a CUDA graph and replayed.

A recurrent model's decoding state has a fixed size, so its decoding step has fixed shapes: the
whole stack of kernel launches can be recorded once per (batch size, dtype) and replayed for
every token, which removes the Python and launch overhead that otherwise bounds decoding at
small batches. Attention joins in with its preallocated ``StaticKVCache``.

A CUDA graph reads and writes fixed addresses, while the mixers' ``forward`` may put new tensors
into their decoding caches (``state.ssm = ...``). So the step is written as: run the model on a
static token buffer, then copy every tensor the step put into the caches back into the buffers
the caches started with and point the caches at them again. Captured, those copies are part of
the graph; on a CPU (no graphs) the same step runs eagerly, which is how the CPU tests check the
bookkeeping. A cache that keeps something other than tensors and changes it per token (a host
counter) cannot be replayed from a graph: capturing such a model raises ``NotCapturable``.

What the host can foresee from the token's position alone (MemMamba: whether the token ends a
chunk, the only steps whose note pool changes) is told to the mixers before each step
(``LanguageModel.schedule_step``) as host values in their caches; one graph is captured per
distinct set of those values, and each step replays its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

Path = tuple[str | int, ...]  # attribute names and list indices from the list of layer caches


class NotCapturable(RuntimeError):
    """The model's decoding step cannot be replayed from a CUDA graph."""


def cache_leaves(item: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, value) of every leaf of a decoding cache: nested dataclasses, lists and tuples."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        for f in dataclasses.fields(item):
            yield from cache_leaves(getattr(item, f.name), (*path, f.name))
    elif isinstance(item, list | tuple):
        for i, sub in enumerate(item):
            yield from cache_leaves(sub, (*path, i))
    else:
        yield path, item


def _get(root: Any, path: Path) -> Any:
    for key in path:
        root = root[key] if isinstance(key, int) else getattr(root, key)
    return root


def _set(root: Any, path: Path, value: Any) -> None:
    parent, key = _get(root, path[:-1]), path[-1]
    if isinstance(key, int):
        parent[key] = value
    else:
        object.__setattr__(parent, key, value)  # also for frozen dataclasses


class CapturedStep:
    """The decoding step of ``model`` for ``batch_size`` sequences in ``dtype``, up to ``max_len``
    tokens in all (what attention's cache holds; the recurrent caches ignore it).

    ``states``: the per-layer caches the step reads and updates (static buffers); ``token``:
    int64 [batch_size, 1], the input of the next step; ``logits``: [batch_size, vocab] in the
    model dtype, the output of the last step. Usage: ``reset()``, fill ``states`` (a prefill
    through the model, then ``reclaim()``), then per token: write ``token``,
    ``replay(position)``, read ``logits``. On CUDA the step is captured at construction, once
    per schedule (see the module's docstring); elsewhere ``replay`` runs it.
    """

    def __init__(
        self, model: nn.Module, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.model = model
        self.states = model.init_states(batch_size, device, dtype, max_len=max_len)
        leaves = list(cache_leaves(self.states))
        self.buffers = {p: v for p, v in leaves if isinstance(v, torch.Tensor)}
        self.host = {p: v for p, v in leaves if not isinstance(v, torch.Tensor)}
        self.initial = {p: t.clone() for p, t in self.buffers.items()}
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if torch.device(device).type == "cuda":
            for key, position in self._schedules().items():
                self.graphs[key] = self._capture(position)

    def _step(self) -> torch.Tensor:
        logits = self.model(self.token, states=self.states).logits[:, -1]
        self.reclaim()
        return logits

    def reclaim(self) -> None:
        """Copy the tensors that a pass through the model put into ``states`` into the static
        buffers, and point ``states`` at the buffers again."""
        for path, buffer in self.buffers.items():
            current = _get(self.states, path)
            if current is not buffer:
                buffer.copy_(current)
                _set(self.states, path, buffer)

    def reset(self) -> None:
        """Empty caches, in the same buffers, and no schedule."""
        for path, buffer in self.buffers.items():
            buffer.copy_(self.initial[path])
        self._schedule(None)

    def replay(self, position: int | None = None) -> torch.Tensor:
        """Run the step on ``token`` -> logits [batch_size, vocab]. ``position``: the token's
        (the tokens before it), which lets the step skip what the host foresees; None: the
        step decides everything on the device."""
        self._schedule(position)
        if not self.graphs:
            self.logits = self._step()
        else:
            graph, self.logits = self.graphs[self._host_key()]
            graph.replay()
        return self.logits

    def _schedule(self, position: int | None) -> None:
        """The host values of the step at ``position`` (None: the caches' initial ones)."""
        if position is None:
            for path, value in self.host.items():
                _set(self.states, path, value)
        else:
            self.model.schedule_step(self.states, position)

    def _host_key(self) -> tuple:
        return tuple(_get(self.states, path) for path in self.host)

    def _schedules(self) -> dict[tuple, int | None]:
        """A position for each distinct schedule the steps can have, None for the unscheduled."""
        found: dict[tuple, int | None] = {self._host_key(): None}
        for position in range(self.model.step_period):
            self._schedule(position)
            found.setdefault(self._host_key(), position)
        self._schedule(None)
        return found

    def _capture(self, position: int | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up passes (kernel compilation, library workspaces) on a side stream, as capture
        # requires; then the caches are emptied again and the step recorded.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._schedule(position)
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.reset()
        self._schedule(position)
        key = self._host_key()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._step()
        self.check_host_values(key)
        self.reset()
        return graph, logits

    def check_host_values(self, key: tuple) -> None:
        """Raise NotCapturable if a step changed a cache's non-tensor value from ``key`` (a
        token count kept on the host): a graph would replay the value it saw at capture."""
        changed = [p for p, v in zip(self.host, key, strict=True) if _get(self.states, p) != v]
        if changed:
            names = ", ".join(".".join(map(str, p)) for p in changed)
            raise NotCapturable(f"the decoding caches keep host values that change per token ({names})")
