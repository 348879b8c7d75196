"""A recurrent mixer's decoding memory does not grow with the context: after 1K and after 128K
tokens of prompt (read in chunks with carried state) the caches hold the same bytes, and the
GPU memory a decoding step needs differs by no more than the allocator's rounding."""

from __future__ import annotations

import pytest
import torch

from memlab.models.chunked import prefill
from tests.gpu.test_models import DEVICE, VOCAB, language_model

RECURRENT = ["gdn", "mom", "mamba", "memmamba"]
CHUNK = 8192
NOISE = 2**20  # bytes: the caching allocator's block rounding


def _cache_bytes(states: list) -> int:
    """Bytes of every tensor the per-layer caches hold."""
    seen: dict[int, int] = {}

    def walk(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            seen[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item)
        elif hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                walk(item)

    walk(states)
    return sum(seen.values())


def _after_context(model: torch.nn.Module, length: int) -> tuple[int, int]:
    """(cache bytes, memory allocated) after a ``length``-token prompt and four decoded tokens."""
    ids = torch.randint(VOCAB, (1, length), device=DEVICE)
    states = model.init_states(1, torch.device(DEVICE), torch.float32)
    with torch.no_grad():
        logits = prefill(model, ids, CHUNK, states)
        for _ in range(4):
            logits = model(logits.argmax(-1, keepdim=True), states=states).logits[:, -1]
    torch.cuda.synchronize()
    del ids, logits
    return _cache_bytes(states), torch.cuda.memory_allocated()


@pytest.mark.parametrize("name", RECURRENT)
def test_decoding_memory_is_flat_from_1k_to_128k_tokens(name: str) -> None:
    model = language_model(name, n_layers=2).eval()
    short = _after_context(model, 1024)
    torch.cuda.empty_cache()
    long = _after_context(model, 131072)
    assert long[0] == short[0], f"{name}: caches of {short[0]} bytes after 1K tokens, {long[0]} after 128K"
    assert abs(long[1] - short[1]) <= NOISE, (
        f"{name}: {short[1]} bytes allocated after 1K, {long[1]} after 128K"
    )
