"""Decoding through ``CapturedStep`` (the step a CUDA graph replays; run eagerly on the CPU)
gives the tokens of eager decoding for every mixer, keeps its caches in the same buffers, and
starts every generation from empty caches."""

import functools

import pytest
import torch

from memlab.models import LanguageModel
from memlab.models.captured_step import CapturedStep, NotCapturable, cache_leaves
from memlab.models.layers import Attention, Mamba, MemMamba, MoMAttention

MIXERS = {
    "attention": functools.partial(Attention, num_heads=2),
    "mamba": functools.partial(Mamba, d_state=4),
    "mom": functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2),
    "memmamba": functools.partial(MemMamba, chunk_size=4, pool_size=2, summary_dim=8, head_dim=8),
}
CPU = torch.device("cpu")


def model(name: str) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(40, 16, 2, MIXERS[name], mlp_ratio=2).double().eval()


@pytest.mark.parametrize("name", list(MIXERS))
def test_captured_decoding_equals_eager(name: str) -> None:
    lm = model(name)
    ids = torch.randint(40, (2, 6))
    eager = lm.generate(ids, 9, prefill_chunk=4)
    assert torch.equal(lm.generate(ids, 9, prefill_chunk=4, cuda_graph=True), eager)
    assert torch.equal(lm.generate(ids, 9, prefill_chunk=4, cuda_graph=True), eager)  # reused, reset
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]
    sampled = lm.generate(ids, 9, temperature=1.0, top_k=5, generator=gen[0])
    graphed = lm.generate(ids, 9, temperature=1.0, top_k=5, generator=gen[1], cuda_graph=True)
    assert torch.equal(graphed, sampled)


@pytest.mark.parametrize("name", list(MIXERS))
def test_greedy_tokens_are_the_full_forward_argmax(name: str) -> None:
    """Each token chosen through the captured step is the argmax of one forward pass over the
    whole sequence before it."""
    lm = model(name)
    out = lm.generate(torch.randint(40, (2, 5)), 8, cuda_graph=True)
    logits = lm(out[:, :-1]).logits
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])


def test_the_step_keeps_its_buffers() -> None:
    lm = model("mamba")
    step = CapturedStep(lm, 2, 16, CPU, torch.float64)
    before = {p: t.data_ptr() for p, t in cache_leaves(step.states) if isinstance(t, torch.Tensor)}
    for token in range(3):
        step.token.fill_(token)
        step.replay()
    after = {p: t.data_ptr() for p, t in cache_leaves(step.states) if isinstance(t, torch.Tensor)}
    assert after == before
    assert step.logits.shape == (2, 40)


def test_one_step_is_kept_per_shape() -> None:
    lm = model("attention")
    first = lm.captured_step(1, 10, CPU, torch.float64)
    assert lm.captured_step(1, 200, CPU, torch.float64) is first  # the same length bucket
    assert lm.captured_step(2, 10, CPU, torch.float64) is not first


def test_host_values_that_change_cannot_be_captured() -> None:
    """A cache value kept on the host would be replayed stale from a graph: refused by name."""
    step = CapturedStep(model("mom"), 1, 16, CPU, torch.float64)
    key = step._host_key()
    step.check_host_values(key)  # MoM's only host value, its number of memories, never changes
    step.states[1].num_routed += 1
    with pytest.raises(NotCapturable, match=r"1\.num_routed"):
        step.check_host_values(key)


def test_memmamba_schedules_a_step_of_each_kind() -> None:
    """MemMamba's steps come in two kinds, the token ending its chunk (or unscheduled) and
    not: a graph each; the positions of a chunk give both."""
    lm = model("memmamba")
    assert lm.step_period == 4
    step = CapturedStep(lm, 1, 16, CPU, torch.float64)
    assert sorted(step._schedules().values(), key=str) == [0, None]
    kinds = []
    for position in range(8):
        lm.schedule_step(step.states, position)
        kinds.append(step.states[0].pool.skip_notes)
    assert kinds == [True, True, True, False] * 2
