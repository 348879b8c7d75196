"""MemMamba: the parallel causal top-K pool against sequential insert/evict (fp64, ties
included), the layer against a token-by-token reference (outputs and gradients), chunk
causality of the pools, γ = 0 equals the Mamba backbone bit for bit, cross-layer wiring
(p = 0 off, span, the channel is read), decoding variants and config errors."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from memlab.errors import ConfigError
from memlab.models import LanguageModel
from memlab.models.layers import Mamba, MemMamba
from memlab.models.layers.note_pool import chunk_layout, select_pools

F64 = torch.float64
D, VOCAB = 16, 53
SMALL = {"summary_dim": 8, "num_heads": 2, "head_dim": 4, "d_state": 4}


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_layer(layer_idx: int = 0, active: bool = True, d_model: int = D, **kwargs) -> MemMamba:
    """A float64 layer; ``active`` gives the fusion gains random values (they start at 0)."""
    layer = MemMamba(d_model, layer_idx, **{**SMALL, "chunk_size": 4, "pool_size": 3, **kwargs}).double()
    if active:
        with torch.no_grad():
            for gamma in (layer.gamma_tok, layer.gamma_lay):
                if gamma is not None:
                    gamma.normal_()
    return layer


def sequential_pools(priority: list[float], K: int, R: int = 0) -> list[tuple[list[int], set[int]]]:
    """Pool of each chunk c = 0..len(priority), as (K-best chunk ids, best first; R-recent ids):
    chunks enter a FIFO of R as they complete; the one pushed out (every chunk at once if R = 0)
    is offered to the K best by insert-if-better, evict-the-minimum, ranking by (priority
    descending, older first)."""
    best: list[int] = []
    fifo: list[int] = []
    pools = []
    for c in range(len(priority) + 1):
        pools.append((sorted(best, key=lambda j: (-priority[j], j)), set(fifo)))
        if c == len(priority):
            break
        fifo.append(c)
        if len(fifo) <= R:
            continue
        old = fifo.pop(0)
        if len(best) < K:
            best.append(old)
        else:
            worst = min(best, key=lambda j: (priority[j], -j))  # lowest, youngest among equals
            if priority[old] > priority[worst]:
                best[best.index(worst)] = old
    return pools


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("K,R", [(1, 0), (3, 0), (8, 0), (3, 2)])
def test_parallel_pool_equals_sequential_insert_evict(ties: bool, K: int, R: int) -> None:
    w, T = 5, 97  # 20 chunks, the last one incomplete
    for _ in range(5):
        C = -(-T // w)
        prio = torch.randint(0, 3, (C,)).to(F64) if ties else torch.randn(C, dtype=F64)
        layout = chunk_layout(w, [(0, T, 0)], recent_slots=R)
        index, valid = select_pools(prio[None], layout.older[None], min(K, C))
        expected = sequential_pools(prio[: C - 1].tolist(), K, R)  # the incomplete chunk never enters
        for q in range(C + 1):
            got = [int(i) for i, ok in zip(index[0, q], valid[0, q], strict=True) if ok]
            best, recent = expected[min(q, C - 1)]
            assert got == best, f"chunk {q}"
            assert set(layout.recent[q].nonzero().flatten().tolist()) == recent, f"chunk {q}"


def test_pool_carried_in_pieces_equals_one_pass() -> None:
    """Selecting from a carried pool plus new chunks (a prefill after a prefill) gives the pools
    of a single pass, ties included."""
    K, w = 4, 3
    prio = torch.randint(0, 3, (30,)).to(F64)
    one = [best for best, _ in sequential_pools(prio.tolist(), K)]
    for cut in (0, 7, 16):
        carried = one[cut]  # the pool after chunks < cut, best first
        slots = torch.full((K,), float("-inf"), dtype=F64)
        slots[: len(carried)] = prio[carried]
        ids = carried + [-1] * (K - len(carried))
        layout = chunk_layout(w, [(0, (30 - cut) * w, cut * w)])
        C = layout.num_chunks
        cand = torch.cat([slots, prio[cut:]])[None]
        held = torch.arange(K) < len(carried)
        visible = torch.cat([held.expand(C + 1, K), layout.older], dim=1)[None]
        index, valid = select_pools(cand, visible, K)
        for q in range(C + 1):
            got = [
                ids[i] if i < K else cut + i - K
                for i, ok in zip(index[0, q].tolist(), valid[0, q], strict=True)
                if ok
            ]
            assert got == one[cut + q], f"cut {cut}, chunk {q}"


def test_chunk_layout_documents_and_offsets() -> None:
    layout = chunk_layout(4, [(0, 6, 2), (6, 7, 0), (7, 16, 0)])
    # document 0 continues at position 2: chunks {2,3} and {4..7}; document 1: {0}; document 2: 3 chunks
    assert layout.token_chunk.tolist() == [0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5]
    assert layout.chunk_index.tolist() == [0, 1, 0, 0, 1, 2]
    assert layout.complete.tolist() == [True, True, False, True, True, False]
    assert layout.older[5].tolist() == [False, False, False, True, True, False]  # own document only
    assert not layout.older[2].any() and not layout.recent.any() and not layout.ends_chunk
    assert layout.query_index.tolist() == [0, 1, 0, 0, 1, 2, 2]  # the last chunk continues
    fifo = chunk_layout(4, [(0, 6, 2), (6, 7, 0), (7, 16, 0)], recent_slots=1)
    assert fifo.recent[5].tolist() == [False, False, False, False, True, False]
    assert fifo.older[5].tolist() == [False, False, False, True, False, False]


def reference(layer: MemMamba, x: torch.Tensor) -> torch.Tensor:
    """The layer's output [B, T, D] from a token-by-token pool (sequential insert/evict) and
    per-token attention, fed to the backbone."""
    B, T, _ = x.shape
    w, K, R = layer.chunk_size, layer.pool_size, layer.recent_slots
    att = layer.token_attn
    H, Dh = att.num_heads, att.head_dim
    rows = []
    for b in range(B):
        pool: list[tuple[float, int, torch.Tensor, torch.Tensor]] = []  # (log π, age, summary, log π)
        fifo: list[tuple[float, int, torch.Tensor, torch.Tensor]] = []
        mixed = []
        for t in range(T):
            if t % w == 0 and t > 0:
                m = x[b, t - w : t].amax(0)
                s = layer.summary_norm(layer.summary_proj(m))
                lp = F.logsigmoid(layer.scorer(m))[0]
                fifo.append((lp.item(), t // w - 1, s, lp))
                if len(fifo) > R:
                    note = fifo.pop(0)
                    if len(pool) < K:
                        pool.append(note)
                    else:
                        worst = min(range(K), key=lambda i: (pool[i][0], -pool[i][1]))
                        if note[0] > pool[worst][0]:
                            pool[worst] = note
            u = x[b, t]
            q = att.q_proj(u).view(H, Dh)
            logits = [(q * att.null_key).sum(-1) / Dh**0.5]
            values = [att.null_value]
            for _, _, s, lp in pool + fifo:
                logits.append((q * att.k_proj(s).view(H, Dh)).sum(-1) / Dh**0.5 + lp)
                values.append(att.v_proj(s).view(H, Dh))
            p = torch.stack(logits, -1).softmax(-1)  # [H, slots]
            read = att.o_proj((p[:, :, None] * torch.stack(values, 1)).sum(1).reshape(-1))
            mixed.append(u + layer.gamma_tok * torch.sigmoid(layer.gate(u)) * read)
        rows.append(torch.stack(mixed))
    return layer.backbone(torch.stack(rows)).hidden


@pytest.mark.parametrize("recent_slots", [0, 2])
def test_layer_matches_token_by_token_reference_outputs_and_gradients(recent_slots: int) -> None:
    layer = make_layer(cross_layer_period=0, chunk_size=3, pool_size=2, recent_slots=recent_slots)
    x = torch.randn(2, 17, D, dtype=F64, requires_grad=True)
    out = layer(x).hidden
    ref = reference(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(out)
    names, params = zip(*layer.named_parameters(), strict=True)
    g_out = torch.autograd.grad((out * weights).sum(), [x, *params])
    g_ref = torch.autograd.grad((ref * weights).sum(), [x, *params])
    for name, a, b in zip(["x", *names], g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
    grads = dict(zip(["x", *names], g_out, strict=True))
    assert grads["scorer.weight"].abs().sum() > 0, "the priority bias gives the scorer a gradient"


@pytest.mark.parametrize("t", [0, 5, 6, 13])
def test_pool_of_a_chunk_sees_nothing_of_its_own_or_later_chunks(t: int) -> None:
    """Perturbing token t (chunk c) leaves every pool of chunks <= c, and every output before t,
    exactly unchanged, in every layer of a stack with cross-layer attention."""
    torch.manual_seed(1)
    lm = LanguageModel(
        VOCAB, D, n_layers=3, mixer=lambda **kw: make_layer(**kw, cross_layer_period=1, recent_slots=1)
    ).double()
    x = torch.randint(0, VOCAB, (2, 23))
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    views = {}
    for name, ids in (("x", x), ("y", y)):
        captured: list = []
        hooks = [
            block.register_forward_hook(lambda m, a, o, c=captured: c.append(o.memory)) for block in lm.layers
        ]
        views[name] = (lm(ids).logits, captured)
        for h in hooks:
            h.remove()
    c = t // 4
    (la, va), (lb, vb) = views["x"], views["y"]
    assert torch.equal(la[:, :t], lb[:, :t])
    for a, b in zip(va, vb, strict=True):
        assert torch.equal(a.summary[:, : c + 1], b.summary[:, : c + 1])
        assert torch.equal(a.log_priority[:, : c + 1], b.log_priority[:, : c + 1])
    if c + 1 < va[0].summary.shape[1]:
        assert not torch.equal(va[0].summary[:, c + 1 :], vb[0].summary[:, c + 1 :])


def test_gamma_zero_is_exactly_the_mamba_backbone() -> None:
    """An untrained MemMamba LM equals a Mamba LM with the same weights, bit for bit; the fusion
    gains still get gradients, so training moves away from it."""
    kwargs = {"d_state": 4, "expand": 2}
    torch.manual_seed(3)
    mem = LanguageModel(
        VOCAB, D, 3, lambda **kw: make_layer(**kw, active=False, cross_layer_period=2)
    ).double()
    mamba = LanguageModel(VOCAB, D, 3, lambda **kw: Mamba(**kw, **kwargs)).double()
    state = {k.replace("mixer.backbone.", "mixer."): v for k, v in mem.state_dict().items()}
    mamba.load_state_dict({k: v for k, v in state.items() if k in mamba.state_dict()})
    x = torch.randint(0, VOCAB, (2, 45))
    out = mem(x).logits
    assert torch.equal(out, mamba(x).logits)
    out.logsumexp(-1).sum().backward()
    assert mem.layers[0].mixer.gamma_tok.grad.abs().sum() > 0
    assert mem.layers[1].mixer.gamma_lay.grad.abs().sum() > 0


def test_cross_layer_period_and_span() -> None:
    def stack(p: int, g: int | None = None) -> list[MemMamba]:
        return [make_layer(i, cross_layer_period=p, cross_layer_span=g) for i in range(6)]

    assert not any(m.reads_layer_memory or m.layer_attn is not None for m in stack(0))
    assert [m.reads_layer_memory for m in stack(2)] == [False, True, False, True, False, True]
    assert [m.cross_layer_span for m in stack(4) if m.reads_layer_memory] == [3]  # layer 3 reads 0..2
    assert [m.layer_embed.shape[0] for m in stack(2, 3) if m.reads_layer_memory] == [1, 3, 3]
    with pytest.raises(ConfigError, match="cross_token"):
        make_layer(cross_token=False, cross_layer_period=0)


def test_cross_layer_reads_the_earlier_layers_pools() -> None:
    layers = [make_layer(i, cross_layer_period=2, cross_layer_span=2) for i in range(2)]
    x = torch.randn(1, 14, D, dtype=F64)
    memory = [layers[0](x).memory]
    out = layers[1](x, layer_memory=memory).hidden
    shifted = [type(memory[0])(memory[0].layout, memory[0].summary + 1.0, memory[0].log_priority)]
    assert not torch.allclose(out, layers[1](x, layer_memory=shifted).hidden)
    with pytest.raises(ValueError, match="layer_memory"):
        layers[1](x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fusion": "weighted"},
        {"fusion": "residual"},
        {"note_scorer": "positional", "note_period": 12, "note_window": 5},
        {"cross_token": False, "cross_layer_period": 1},
        {"recent_slots": 2},
        # ties: chunks 0 and 1 (and 4, 5) share a priority, and leave the FIFO in the same piece
        {"recent_slots": 2, "pool_size": 1, "note_scorer": "positional", "note_period": 16, "note_window": 8},
    ],
)
def test_variants_decode_like_the_full_forward(kwargs: dict) -> None:
    torch.manual_seed(2)
    lm = LanguageModel(
        VOCAB, D, 2, lambda **kw: make_layer(**kw, **{"cross_layer_period": 2, **kwargs})
    ).double()
    x = torch.randint(0, VOCAB, (2, 30))
    full = lm(x).logits
    # a prefill, then a short piece and tokens; a prefill, then a piece over several chunks
    for cut in (13, 27):
        states = lm.init_states(2, torch.device("cpu"), F64)
        shapes = [(s.summary.shape, s.chunk_max.shape) for s in states]
        parts = [lm(x[:, :11], states=states).logits, lm(x[:, 11:cut], states=states).logits]
        parts += [lm(x[:, i : i + 1], states=states).logits for i in range(cut, 30)]
        torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)
        assert [(s.summary.shape, s.chunk_max.shape) for s in states] == shapes  # constant-size cache
        assert states[0].position == 30 and states[0].valid.all()  # 7 complete chunks fill K + R <= 5


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"pool_size": -1}, "pool_size"),
        ({"recent_slots": -1}, "recent_slots"),
        ({"summary_dim": 2.5}, "summary_dim"),
        ({"cross_layer_period": -1}, "cross_layer_period"),
        ({"cross_layer_span": 0}, "cross_layer_span"),
        ({"fusion": "sum"}, "fusion"),
        ({"note_scorer": "random"}, "note_scorer"),
        ({"note_window": 300}, "note_window"),
        ({"cross_token": "yes"}, "cross_token"),
        ({"d_state": 0}, "d_state"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"model.mixer.{key}"):
        MemMamba(D, **kwargs)
