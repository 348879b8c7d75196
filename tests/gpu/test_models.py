"""Whole-model checks on the GPU that random layer cases do not cover: decoding through the
caches (the Triton decode steps) against the full-sequence forward, MoM at its published head
shape, the grouped per-memory projection, and training steps free of host synchronisation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from memlab.kernels.compare import rel_err
from memlab.models import LanguageModel
from memlab.models.layers import Attention, Mamba, MemMamba, MoMAttention
from memlab.models.layers.mom.dispatch import packed_layout, project_packed
from tests.conformance.check import report
from tests.conformance.layers import MOM

DEVICE = "cuda"
VOCAB = 256
MEMMAMBA_KNOBS = dict(
    chunk_size=32, pool_size=6, summary_dim=32, num_heads=4, head_dim=32, backbone={"d_state": 16}
)
MIXERS = {
    "attention": functools.partial(Attention, num_heads=4),
    "mom": functools.partial(MoMAttention, num_heads=2, head_dim=64, num_memories=4, topk=2),
    "gdn": functools.partial(
        MoMAttention, num_heads=2, head_dim=64, num_memories=1, topk=1, shared_mem=False
    ),
    "mamba": functools.partial(Mamba, d_state=16),
    "memmamba": functools.partial(MemMamba, cross_layer_period=2, **MEMMAMBA_KNOBS),
}


def language_model(name: str, n_layers: int = 4) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(VOCAB, 128, n_layers, MIXERS[name])
    with torch.no_grad():  # MemMamba's fusion gains start at 0, which would test its backbone only
        for pname, p in model.named_parameters():
            if pname.rsplit(".", 1)[-1] in ("gamma_tok", "gamma_lay"):
                p.normal_()
    return model.to(DEVICE)


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("prompt", [1, 100])
def test_prefill_then_decode_equals_full_forward(name: str, prompt: int) -> None:
    """The decode steps (fused-recurrent gated delta rule, selective state update, caches) give
    the logits of the chunked full-sequence forward, in fp32."""
    model = language_model(name)
    ids = torch.randint(VOCAB, (2, 140), device=DEVICE)
    with torch.no_grad():
        full = model(ids).logits
        states = model.init_states(2, torch.device(DEVICE), torch.float32)
        parts = [model(ids[:, :prompt], states=states).logits]
        parts += [model(ids[:, t : t + 1], states=states).logits for t in range(prompt, ids.shape[1])]
    assert rel_err(torch.cat(parts, dim=1), full) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("docs", [None, [0, 100, 100, 101, 1000]])
def test_mom_published_head_shape(precision: str, docs: list[int] | None) -> None:
    """The MoM paper's layer (D 1024, 4 heads of 256, 4 memories, top-2, shared), fast path
    against the twin, dense and with packed documents (an empty and a one-token one)."""
    spec = {"dtype": precision, "d_model": 1024, "num_heads": 4, "head_dim": 256, "expand_v": 1}
    spec |= {"num_memories": 4, "topk": 2, "shared_mem": True, "conv_size": 4, "empty_memory": False}
    spec |= {"B": 2, "T": 1000} if docs is None else {"B": 1, "T": docs[-1], "docs": docs}
    torch.manual_seed(0)
    measures = MOM.check(spec, DEVICE)
    assert all(m.ok for m in measures), report(measures)


@pytest.mark.parametrize("tokens", [1000, 4099])
def test_grouped_projection_matches_dense(tokens: int) -> None:
    """``torch._grouped_mm`` against the dense projection-and-gather on runs of awkward lengths
    (memory 4 of 5 stays empty), bf16: output and both gradients."""
    M, S, D, width = 5, 3, 1024, 2056  # the published layer's D and H·K + H·V + 2H
    chosen = torch.rand(tokens, M - 1, device=DEVICE).argsort(-1)[:, :S]
    visited = torch.zeros(tokens, M, dtype=torch.long, device=DEVICE).scatter_(1, chosen, 1)
    sequence = torch.zeros(tokens, dtype=torch.long, device=DEVICE)
    bounds = torch.tensor([0], device=DEVICE), torch.tensor([tokens], device=DEVICE)
    segments = packed_layout(visited, chosen, sequence, *bounds)
    x = torch.randn(tokens, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(M, D, width, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    cotangent = torch.randn(tokens * S, width, device=DEVICE, dtype=torch.bfloat16)
    results = []
    for grouped in (True, False):
        y = project_packed(x, weight, segments, grouped)
        results.append((y, *torch.autograd.grad(y, (x, weight), cotangent)))
    for name, a, b in zip(("out", "dx", "dweight"), *results, strict=True):
        assert rel_err(a, b) < 3e-2, name


@pytest.mark.parametrize("docs", [None, [0, 1000, 1000, 1001, 4096]])
def test_no_host_sync_in_mom_training_step(docs: list[int] | None) -> None:
    """A bf16-autocast forward, backward and AdamW step of the published MoM layer's packed
    path, dense and with packed documents."""
    layer = MoMAttention(1024, num_heads=4, head_dim=256, num_memories=4, topk=2).to(DEVICE)
    layer.backend = "triton"
    B, T = (2, 2048) if docs is None else (1, docs[-1])
    x = torch.randn(B, T, 1024, device=DEVICE)
    cu = None if docs is None else torch.tensor(docs, device=DEVICE, dtype=torch.int32)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = layer(x, cu_seqlens=cu)
        loss = out.hidden.float().square().mean() + sum(out.aux_losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _step_without_sync(step)


@pytest.mark.parametrize("name", list(MIXERS))
def test_no_host_sync_in_lm_training_loss_step(name: str) -> None:
    """A bf16-autocast training step through the loss the Lightning module and the train_step
    benchmark use (``targets=``: the chunked linear cross-entropy), for every mixer."""
    model = language_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(VOCAB, (4, 513), device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(ids[:, :-1], targets=ids[:, 1:].flatten())
        loss = out.loss + sum(out.aux_losses.values(), torch.zeros((), device=DEVICE))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _step_without_sync(step)


@pytest.mark.parametrize("name", ["mamba", "memmamba"])
def test_no_host_sync_in_lm_training_step(name: str) -> None:
    """A bf16-autocast training step of a small language model (loss, backward, clipping,
    AdamW): 2048 tokens keep the embedding's backward on its sync-free kernel."""
    model = language_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(VOCAB, (4, 513), device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss = loss + sum(out.aux_losses.values(), torch.zeros((), device=loss.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _step_without_sync(step)


def _step_without_sync(step) -> None:
    """Run ``step`` once to compile and autotune (which synchronises), then again under sync
    debug mode "error"."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
