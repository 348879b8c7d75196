"""MemMamba's decoding step (``MemMamba.step``: the next pool a top-K over the K + R carried
slots and the token's note, one query's attention over K + R slots) against the general path
at T = 1 continued from the same cache, token after token through several chunk boundaries, in
a stack with cross-layer attention: logits, every cache leaf and the pools each layer hands up
(exactly so in the first layer, whose input both paths share)."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from memlab.models import LanguageModel
from memlab.models.captured_step import cache_leaves
from memlab.models.layers import MemMamba
from memlab.models.layers.memmamba.note_pool import NotePool

F64, CPU = torch.float64, torch.device("cpu")
SMALL = {"summary_dim": 8, "num_heads": 2, "head_dim": 4, "backbone": {"d_state": 4}}
TIES = {"note_scorer": "positional", "note_period": 8, "note_window": 4}  # runs of equal priorities


def stack(**options) -> LanguageModel:
    """A float64 three-layer MemMamba LM (w = 4, K = 3 unless given), fusion gains random."""

    def layer(**kw) -> MemMamba:
        mixer = MemMamba(
            **kw, **{**SMALL, "chunk_size": 4, "pool_size": 3, "cross_layer_period": 2, **options}
        )
        with torch.no_grad():
            for gamma in (mixer.gamma_tok, mixer.gamma_lay):
                if gamma is not None:
                    gamma.normal_()
        return mixer

    return LanguageModel(32, 16, 3, layer, mlp_ratio=0).double()


def handed_up(lm: LanguageModel, tokens: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
    """Logits [B, 1, V] of one token and the PoolView each layer returned."""
    views = []
    hooks = [b.mixer.register_forward_hook(lambda m, i, out: views.append(out.memory)) for b in lm.layers]
    try:
        return lm(tokens, states=states).logits, views
    finally:
        for hook in hooks:
            hook.remove()


def assert_same(got, want, exact: bool, what: str) -> None:
    want = want.detach()
    if exact or not got.is_floating_point():
        assert torch.equal(got, want), what
    else:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=what)


@pytest.mark.parametrize(
    "options,prompt",
    [
        ({}, 5),  # learned scorer, gated fusion, the cross-layer layer reads one layer below
        ({"recent_slots": 2}, 0),
        ({"pool_size": 1, "recent_slots": 2, **TIES}, 3),  # ties; R > K
        ({"pool_size": 1, "chunk_size": 1}, 0),
        ({"chunk_size": 1, "recent_slots": 2, **TIES, "note_period": 3, "note_window": 1}, 2),
        ({"fusion": "weighted", "cross_layer_period": 1, "recent_slots": 1, **TIES}, 6),
        ({"fusion": "residual", "cross_layer_period": 1}, 1),
        ({"cross_token": False, "cross_layer_period": 1, "cross_layer_span": 2}, 3),
    ],
)
@pytest.mark.parametrize("scheduled", [False, True], ids=["on_device", "scheduled"])
def test_step_equals_the_general_path(options: dict, prompt: int, scheduled: bool) -> None:
    """Token after token, the step's output, caches and pools equal the general path's; with
    ``schedule_step`` (a token inside its chunk skips the pool's selection) exactly so too."""
    torch.manual_seed(0)
    lm = stack(**options)
    ids = torch.randint(32, (2, prompt + 13))
    stepped = lm.init_states(2, CPU, F64)
    if prompt:
        with torch.no_grad():
            lm(ids[:, :prompt], states=stepped)
    general = copy.deepcopy(stepped)
    for t in range(prompt, ids.shape[1]):
        token = ids[:, t : t + 1]
        if scheduled:
            lm.schedule_step(stepped, t)
        with torch.no_grad(), mock.patch.object(NotePool, "forward", side_effect=AssertionError("no step")):
            got, got_views = handed_up(lm, token, stepped)
        with torch.enable_grad():  # grad mode takes the general path, at T = 1
            want, want_views = handed_up(lm, token, general)
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-10)
        for (path, a), (_, b) in zip(cache_leaves(stepped), cache_leaves(general), strict=True):
            if isinstance(a, torch.Tensor):  # not the host's schedule
                assert_same(a, b, path[:2] == (0, "pool"), f"token {t}: {path}")
        for i, (a, b) in enumerate(zip(got_views, want_views, strict=True)):
            assert_same(a.summary, b.summary, i == 0, f"token {t}: layer {i} summary")
            assert_same(a.log_priority, b.log_priority, i == 0, f"token {t}: layer {i} log_priority")
    assert int(stepped[0].pool.position) == ids.shape[1] and stepped[0].pool.valid.any()
