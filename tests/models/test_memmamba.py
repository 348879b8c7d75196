"""MemMamba: the parallel causal top-K pool against sequential insert/evict (fp64, ties
included), the layer's cross-token and cross-layer attention against token-by-token references
(outputs and gradients), chunk causality of the pools, γ = 0 equals the Mamba backbone bit for
bit, where cross-layer attention runs, the logged stats, decoding variants with a
constant-size cache, and config errors."""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F

from memlab.errors import ConfigError
from memlab.lit.stat_tags import stat_tags
from memlab.models import LanguageModel
from memlab.models.layers import Mamba, MemMamba
from memlab.models.layers.memmamba.chunk_layout import chunk_layout, group_by_chunk, step_layout, ungroup
from memlab.models.layers.memmamba.note_pool import select_pools
from tests.models.pool_reference import read

F64 = torch.float64
D, VOCAB = 16, 53
SMALL = {"summary_dim": 8, "num_heads": 2, "head_dim": 4, "backbone": {"d_state": 4}}


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
    assert not layout.older[2].any() and not layout.recent.any() and not layout.complete[-1]
    assert layout.query_index.tolist() == [0, 1, 0, 0, 1, 2, 2]  # the last chunk continues
    # a grid of 4 columns; the continued chunk's 2 tokens take its first two
    assert layout.width == 4 and layout.token_flat[:7].tolist() == [0, 1, 4, 5, 6, 7, 8]
    step = chunk_layout(4, [(0, 1, 6)])  # a decoding step at position 6: one column
    assert step.width == 1 and step.token_flat.tolist() == [0] and step.chunk_index.tolist() == [1]
    fifo = chunk_layout(4, [(0, 6, 2), (6, 7, 0), (7, 16, 0)], recent_slots=1)
    assert fifo.recent[5].tolist() == [False, False, False, False, True, False]
    assert fifo.older[5].tolist() == [False, False, False, True, False, False]


@pytest.mark.parametrize("recent_slots", [0, 2])
def test_step_layout_equals_the_host_layout(recent_slots: int) -> None:
    """A decoding step's layout built on the device from the position tensor is the host one."""
    for position in range(13):
        host = chunk_layout(4, [(0, 1, position)], recent_slots)
        device = step_layout(4, recent_slots, torch.tensor(position))
        assert (host.width, host.dense) == (device.width, device.dense)
        names = ("token_flat", "token_chunk", "chunk_index", "complete", "query_index", "older", "recent")
        for name in names:
            assert torch.equal(getattr(host, name), getattr(device, name)), (position, name)


@pytest.mark.parametrize("w,R", [(4, 0), (5, 2)])
def test_chunk_layout_of_a_continued_document_is_shifted_from_its_place_in_a_chunk(w, R) -> None:
    """Decoding steps and prefill pieces reuse the layout of their offset within a chunk; the
    shifted copy equals the layout built for the absolute position."""
    from memlab.models.layers.memmamba.chunk_layout import _build_layout, _cached_layout

    _cached_layout.cache_clear()
    for position in range(0, 6 * w, 1):
        for length in (1, 3, 2 * w + 1):
            got = chunk_layout(w, [(0, length, position)], recent_slots=R)
            want = _build_layout(w, ((0, length, position),), R)
            for field in dataclasses.fields(want):
                a, b = getattr(got, field.name), getattr(want, field.name)
                assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b, (position, field.name)
    assert _cached_layout.cache_info().currsize <= 3 * w


@pytest.mark.parametrize(
    ("segments", "dense"),
    [
        ([(0, 12, 0)], True),
        ([(0, 12, 4)], True),
        ([(0, 10, 0)], False),
        ([(0, 12, 2)], False),
        ([(0, 4, 0), (4, 12, 0)], True),
        ([(0, 3, 0), (3, 12, 0)], False),
    ],
)
def test_dense_layouts_group_as_views_and_match_the_copying_path(segments, dense) -> None:
    """A pass whose chunks are all whole (documents of whole chunks) is grouped by a view;
    everything else by the scatter into the grid. Both give the same grid and the same tokens back."""
    layout = chunk_layout(4, segments)
    assert layout.dense is dense
    x = torch.randn(2, segments[-1][1], 3)
    grid = group_by_chunk(x, layout, -1.0)
    copied = group_by_chunk(x, dataclasses.replace(layout, dense=False), -1.0)
    assert torch.equal(grid, copied)
    assert (grid.data_ptr() == x.data_ptr()) is dense
    assert torch.equal(ungroup(grid, layout), x)


def test_chunk_layout_is_cached_and_usable_after_inference_mode() -> None:
    """Layouts are cached (no rebuild, no host-device copy per step); one first built inside an
    evaluation loop's inference mode must still serve a later training step."""
    segments = [(0, 13, 0)]
    with torch.inference_mode():
        first = chunk_layout(5, segments, recent_slots=1)
    again = chunk_layout(5, list(segments), recent_slots=1)
    assert again is first and not again.older.is_inference()
    x = torch.randn(2, 13, 3, requires_grad=True)
    group_by_chunk(x, again, 0.0).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def sequential_slots(layer: MemMamba, x: torch.Tensor) -> list[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """[b][t] -> the notes (summary [S], log π []) token t of row b of x [B, T, D] reads, kept
    token by token: a chunk's note enters the FIFO once its last token has passed, and the note
    pushed out of it (every note at once if R = 0) enters the K best by insert-if-better,
    evict-the-minimum (the youngest of the lowest)."""
    B, T, _ = x.shape
    notes = layer.pool
    w, K, R = notes.chunk_size, notes.pool_size, notes.recent_slots
    rows = []
    for b in range(B):
        pool: list[tuple[float, int, torch.Tensor, torch.Tensor]] = []  # (log π, age, summary, log π)
        fifo: list[tuple[float, int, torch.Tensor, torch.Tensor]] = []
        slots = []
        for t in range(T):
            if t % w == 0 and t > 0:
                m = x[b, t - w : t].amax(0)
                lp = F.logsigmoid(notes.scorer(m))[0]
                fifo.append((lp.item(), t // w - 1, notes.summary_norm(notes.summary_proj(m)), lp))
                if len(fifo) > R:
                    note = fifo.pop(0)
                    if len(pool) < K:
                        pool.append(note)
                    else:
                        worst = min(range(K), key=lambda i: (pool[i][0], -pool[i][1]))
                        if note[0] > pool[worst][0]:
                            pool[worst] = note
            slots.append([(s, lp) for _, _, s, lp in pool + fifo])
        rows.append(slots)
    return rows


def reference(layer: MemMamba, x: torch.Tensor) -> torch.Tensor:
    """The output [B, T, D] of a layer without cross-layer attention, from token-by-token pools
    and per-token attention, fed to the backbone."""
    slots = sequential_slots(layer, x)
    mixed = [
        [
            x[b, t]
            + layer.gamma_tok * torch.sigmoid(layer.gate(x[b, t])) * read(layer.token_attn, x[b, t], s)[0]
            for t, s in enumerate(row)
        ]
        for b, row in enumerate(slots)
    ]
    return layer.backbone(torch.stack([torch.stack(row) for row in mixed])).hidden


def assert_same_outputs_and_gradients(out: torch.Tensor, ref: torch.Tensor, inputs: dict) -> None:
    """out == ref, and so are their gradients with respect to ``inputs`` (name -> tensor)."""
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(out)
    names, tensors = zip(*inputs.items(), strict=True)
    g_out = torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True, retain_graph=True)
    g_ref = torch.autograd.grad((ref * weights).sum(), tensors, allow_unused=True)
    for name, a, b in zip(names, g_out, g_ref, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("recent_slots", [0, 2])
def test_layer_matches_token_by_token_reference_outputs_and_gradients(recent_slots: int) -> None:
    layer = make_layer(cross_layer_period=0, chunk_size=3, pool_size=2, recent_slots=recent_slots)
    x = torch.randn(2, 17, D, dtype=F64, requires_grad=True)
    out = layer(x).hidden
    assert_same_outputs_and_gradients(out, reference(layer, x), {"x": x, **dict(layer.named_parameters())})
    (g,) = torch.autograd.grad(out.sum(), layer.pool.scorer.weight)
    assert g.abs().sum() > 0, "the priority bias gives the scorer a gradient"


@pytest.mark.parametrize("span", [1, 2])
def test_cross_layer_attention_matches_token_by_token_reference(span: int) -> None:
    """Layer 2 (p = 3) reads the pools of the ``span`` layers below it, keys tagged by layer
    distance: outputs and gradients (to the inputs, its weights and the lower layers' note
    weights) equal a per-token attention over the sequential pools of those layers."""
    kwargs = {"cross_layer_period": 3, "chunk_size": 3, "pool_size": 2, "recent_slots": 1}
    below = [make_layer(i, **kwargs) for i in range(2)]
    top = make_layer(2, **kwargs, cross_layer_span=span, cross_token=False)
    xs = [torch.randn(2, 20, D, dtype=F64, requires_grad=True) for _ in range(3)]
    out = top(xs[2], layer_memory=[layer(x).memory for layer, x in zip(below, xs, strict=False)]).hidden

    read_layers = range(2 - span, 2)
    slots = {j: sequential_slots(below[j], xs[j]) for j in read_layers}
    mixed = []
    for b in range(2):
        for t in range(20):
            notes = [note for j in read_layers for note in slots[j][b][t]]
            tags = [top.layer_embed[2 - j - 1] for j in read_layers for _ in slots[j][b][t]]
            u = xs[2][b, t]
            mixed.append(u + top.gamma_lay * read(top.layer_attn, u, notes, tags)[0])
    ref = top.backbone(torch.stack(mixed).view(2, 20, D)).hidden
    inputs = {f"x{i}": x for i, x in enumerate(xs)}
    for i, layer in enumerate([*below, top]):
        inputs.update({f"layer{i}.{name}": p for name, p in layer.named_parameters()})
    assert_same_outputs_and_gradients(out, ref, inputs)
    with pytest.raises(ValueError, match="layer_memory"):
        top(xs[2])


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


def test_stats_are_logged_under_their_documented_names() -> None:
    lm = LanguageModel(VOCAB, D, 2, lambda **kw: make_layer(**kw, cross_layer_period=2)).double()
    stats = stat_tags(lm(torch.randint(0, VOCAB, (2, 30))).stats)
    names = ["pool_fill", "priority", "gate", "gamma_tok", "attn_entropy", "attn_null"]
    expected = {f"pool/{n}/layer{i}" for n in names for i in (0, 1)}
    expected |= {f"pool/{n}/layer1" for n in ("gamma_lay", "layer_attn_entropy", "layer_attn_null")}
    assert set(stats) == expected
    # chunks of 4, 4, ..., 2 tokens whose pools hold 0, 1, 2, 3, 3, ... of K = 3 notes
    torch.testing.assert_close(stats["pool/pool_fill/layer0"], torch.tensor((4 * 5 + 2) / 30))
    assert all(0 < stats[f"pool/{n}/layer1"] < 1 for n in ("priority", "gate", "attn_null"))
    assert stats["pool/attn_entropy/layer0"] > 0 and stats["pool/layer_attn_entropy/layer1"] > 0


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
        shapes = [(s.pool.summary.shape, s.pool.chunk_max.shape) for s in states]
        parts = [lm(x[:, :11], states=states).logits, lm(x[:, 11:cut], states=states).logits]
        parts += [lm(x[:, i : i + 1], states=states).logits for i in range(cut, 30)]
        torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)
        assert [(s.pool.summary.shape, s.pool.chunk_max.shape) for s in states] == shapes  # constant-size
        for s in (s.pool for s in states):  # and no view into a pass's larger tensors
            for t in (s.summary, s.log_priority, s.valid, s.recent_index, s.chunk_max):
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        pool = states[0].pool
        assert pool.position == 30 and pool.valid.all()  # 7 complete chunks fill K + R <= 5


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
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"head_dim": True}, "head_dim"),
        ({"backbone": {"d_state": 0}}, "backbone.d_state"),
        ({"backbone": {"expand": 1.03}}, "backbone.expand"),
        ({"backbone": {"state": 4}}, "backbone.state"),
        ({"d_state": 4}, "d_state is not an option"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"model.mixer.{key}"):
        MemMamba(D, **kwargs)


def test_checkpoints_from_before_the_note_pool_module_load() -> None:
    lm = LanguageModel(VOCAB, D, 2, lambda **kw: make_layer(**kw, cross_layer_period=2)).double()
    old = {k.replace(".pool.", "."): v for k, v in lm.state_dict().items()}
    assert any(k.endswith("mixer.summary_proj.weight") for k in old)
    fresh = LanguageModel(VOCAB, D, 2, lambda **kw: make_layer(**kw, cross_layer_period=2)).double()
    fresh.load_state_dict(old)
    assert all(
        torch.equal(a, b) for a, b in zip(lm.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
