"""Greedy decoding until a stop string: the prompt fills the per-layer decoding caches
(``net.init_states``) chunk by chunk, then tokens follow one at a time from those caches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from memlab.eval.chunked import chunks

if TYPE_CHECKING:
    from memlab.models import LanguageModel


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """``text`` up to the earliest occurrence of any stop string, or None if none occurs."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(found)] if found else None


@torch.no_grad()
def generate_until(
    net: LanguageModel,
    prompt: Sequence[int],
    decode: Callable[[list[int]], str],
    stops: Sequence[str],
    max_new_tokens: int,
    eos_id: int,
    chunk_size: int | None = None,
) -> str:
    """The greedy continuation of ``prompt`` (token ids), as text: at most ``max_new_tokens``
    tokens, ended early by the end-of-text token or a stop string (which is not returned)."""
    param = next(net.parameters())
    states = net.init_states(1, param.device, param.dtype)
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=param.device)
    # only the last chunk's logits are needed; earlier chunks only fill the caches
    ((_, logits),) = deque(chunks(net, ids, chunk_size, states), maxlen=1)
    out: list[int] = []
    for step in range(max_new_tokens):
        nxt = logits[:, -1].float().argmax(dim=-1, keepdim=True)
        token = int(nxt)
        if token == eos_id:
            break
        out.append(token)
        # decoded text, not ids: a stop string may end inside a token or span several
        text = decode(out)
        cut = cut_at_stop(text, stops)
        if cut is not None:
            return cut
        if step + 1 < max_new_tokens:
            net.schedule_step(states, len(prompt) + step)  # MemMamba: skip what it can
            logits = net(nxt, states=states).logits
    return decode(out)
