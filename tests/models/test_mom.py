"""MoM layer against a token-by-token reference written straight from the equations of the MoM
paper (arXiv 2502.13685; outputs and gradients), plus the properties the public implementations
got wrong: time order inside a memory, convs that never read across memories, the chunked path at small T,
the load-balancing loss, the logged loads and the config errors."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from memlab.errors import ConfigError
from memlab.kernels import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from memlab.kernels.gated_delta_rule import naive_recurrent_gated_delta_rule
from memlab.models.layers import MoMAttention
from memlab.models.layers.mom import padded
from memlab.models.layers.mom.routing import route

F64 = torch.float64
D, H, K = 16, 2, 8
L2_EPS = 1e-6  # the kernel's q/k normalisation: x / sqrt(Σx² + eps)


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_layer(num_memories: int, topk: int, shared_mem: bool = True, **kwargs) -> MoMAttention:
    layer = MoMAttention(
        D, num_heads=H, head_dim=K, num_memories=num_memories, topk=topk, shared_mem=shared_mem, **kwargs
    ).double()
    with torch.no_grad():  # a norm weight of ones would hide a mix-up of its channels
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + L2_EPS)


def causal_conv(history: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """silu(Σ_s w[:, W−1−s] · u_{t−s}) over the inputs seen so far (zeros before the first)."""
    W = weight.shape[1]
    acc = sum(weight[:, W - 1 - s] * u for s, u in enumerate(reversed(history[-W:])))
    return F.silu(acc)


def reference(layer: MoMAttention, x: torch.Tensor) -> torch.Tensor:
    """The layer's output [B, T, D], one token at a time, from the equations of mom.md."""
    B, T, _ = x.shape
    E, V = layer.num_memories, layer.value_dim
    proj = layer.memory_proj  # [M, D, H·K + H·V + 2H]: k, v, β, a
    eye = torch.eye(K, dtype=x.dtype)
    outputs = []
    for b in range(B):
        states = {m: x.new_zeros(H, K, V) for m in range(layer.num_rows)}
        k_inputs: dict[int, list[torch.Tensor]] = {m: [] for m in states}
        v_inputs: dict[int, list[torch.Tensor]] = {m: [] for m in states}
        q_inputs: list[torch.Tensor] = []
        for t in range(T):
            x_t = x[b, t]
            q_inputs.append(layer.q_proj.weight @ x_t)
            q = l2norm(causal_conv(q_inputs, layer.q_conv.weight).view(H, K))
            if E == 1:
                visits = [(0, 1.0)]
            else:
                p = torch.softmax(layer.router.weight @ x_t, dim=-1)
                top, chosen = p.topk(layer.topk)
                visits = list(zip(chosen.tolist(), top / top.sum(), strict=True))
            if layer.shared_mem:
                visits.append((E, 1.0))
            o = x.new_zeros(H, V)
            for m, weight in visits:
                k_in, v_in, b_in, a_in = (x_t @ proj[m]).split([H * K, H * V, H, H])
                k_inputs[m].append(k_in)
                v_inputs[m].append(v_in)
                k = l2norm(causal_conv(k_inputs[m], layer.k_conv.weight).view(H, K))
                v = causal_conv(v_inputs[m], layer.v_conv.weight).view(H, V)
                beta = torch.sigmoid(b_in)[:, None, None]
                alpha = torch.exp(-torch.exp(layer.A_log) * F.softplus(a_in + layer.dt_bias))[:, None, None]
                transition = alpha * (eye - beta * k[:, :, None] * k[:, None, :])
                # Products as broadcast sums: thousands of tiny batched matmuls would each pay a
                # thread-pool round trip, which dominates on a busy CPU.
                decayed = (transition[:, :, :, None] * states[m][:, None, :, :]).sum(2)
                states[m] = decayed + beta * k[:, :, None] * v[:, None, :]
                o = o + weight * K**-0.5 * (states[m] * q[:, :, None]).sum(1)
            gate = (layer.gate_proj.weight @ x_t).view(H, V)
            normed = o / torch.sqrt(o.square().mean(-1, keepdim=True) + layer.norm.eps)
            outputs.append(layer.o_proj.weight @ (normed * layer.norm.weight * F.silu(gate)).flatten())
    return torch.stack(outputs).view(B, T, -1)


def gdn_reference(layer: MoMAttention, x: torch.Tensor) -> torch.Tensor:
    """Gated DeltaNet written as one would without MoM: full-sequence convs, one recurrence."""
    B, T, _ = x.shape
    V = layer.value_dim

    def conv(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        padded = F.pad(u.transpose(1, 2), (weight.shape[1] - 1, 0))
        return F.silu(F.conv1d(padded, weight[:, None], groups=weight.shape[0])).transpose(1, 2)

    k, v, b, a = (x @ layer.memory_proj[0]).split([H * K, H * V, H, H], dim=-1)
    q = conv(x @ layer.q_proj.weight.T, layer.q_conv.weight).view(B, T, H, K)
    k = conv(k, layer.k_conv.weight).view(B, T, H, K)
    v = conv(v, layer.v_conv.weight).view(B, T, H, V)
    g = -layer.A_log.exp() * F.softplus(a + layer.dt_bias)
    o, _ = naive_recurrent_gated_delta_rule(l2norm(q), l2norm(k), v, g, b.sigmoid())
    return layer.o_proj(layer.norm(o, layer.gate_proj(x).view(B, T, H, V)).flatten(2))


@pytest.mark.parametrize("shared_mem", [True, False])
@pytest.mark.parametrize("num_memories,topk", [(1, 1), (2, 1), (4, 2), (3, 3)])
def test_layer_matches_token_by_token_reference(num_memories: int, topk: int, shared_mem: bool) -> None:
    layer = make_layer(num_memories, topk, shared_mem)
    x = torch.randn(2, 70, D, dtype=F64, requires_grad=True)  # T = 70: one full chunk and a ragged one
    out = layer(x).hidden
    ref = reference(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)

    params = [layer.memory_proj, layer.A_log, layer.dt_bias, layer.q_conv.weight, layer.k_conv.weight]
    params += [layer.norm.weight] + ([layer.router.weight] if layer.router is not None else [])
    cotangent = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *params], cotangent)
    ref_grads = torch.autograd.grad(ref, [x, *params], cotangent)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


def test_single_memory_is_gated_deltanet() -> None:
    layer = make_layer(1, 1, shared_mem=False)
    assert layer.router is None
    x = torch.randn(2, 70, D, dtype=F64)
    out = layer(x)
    torch.testing.assert_close(out.hidden, gdn_reference(layer, x), rtol=1e-9, atol=1e-11)
    assert out.aux_losses == {} and out.stats == {}


def test_single_memory_lays_nothing_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # every token visits the one memory: the rows are the sequences, with or without a state
    def refuse(*args):
        raise AssertionError("padded_layout called with a single memory")

    monkeypatch.setattr(padded, "padded_layout", refuse)
    layer = make_layer(1, 1, shared_mem=False)
    x = torch.randn(2, 9, D, dtype=F64)
    state = layer.init_state(2, torch.device("cpu"), F64)
    torch.testing.assert_close(layer(x, state=state).hidden, layer(x).hidden, rtol=1e-12, atol=1e-12)


def routed_inputs(sign: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """x [B, T, D] whose channel 0 is ±scale (sign [B, T]) and whose other channels are noise."""
    x = torch.randn(*sign.shape, D, dtype=F64)
    x[..., 0] = scale * sign
    return x


def steer_router(layer: MoMAttention, logits_per_unit: list[float]) -> None:
    """Router logits = x_0 · logits_per_unit: the routing depends on the sign of channel 0 only."""
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, 0] = torch.tensor(logits_per_unit, dtype=F64)


def test_time_order_is_kept_inside_a_memory() -> None:
    # Every token goes to memory 0: all dispatch keys are equal, the case where an unstable
    # sort reorders the memory's tokens.
    layer = make_layer(2, 1, shared_mem=False)
    steer_router(layer, [10.0, -10.0])
    x = routed_inputs(torch.ones(2, 150))
    state = layer.init_state(2, torch.device("cpu"), F64)
    out = layer(x, state=state).hidden

    gdn = make_layer(1, 1, shared_mem=False)
    shared_weights = {
        k: v for k, v in layer.state_dict().items() if k.split(".")[0] not in ("router", "memory_proj")
    }
    gdn.load_state_dict({**shared_weights, "memory_proj": layer.memory_proj[:1]})
    torch.testing.assert_close(out, gdn_reference(gdn, x), rtol=1e-9, atol=1e-11)
    assert state.routed[:, 1].abs().max() == 0, "a memory no token was routed to was written"


def test_convs_never_read_across_memories() -> None:
    # Even tokens go to memory 0, odd ones to memory 1, and q's conv only sees the current
    # token, so a token's output can depend on the other memory's tokens only through a k/v
    # conv that reads across memories (e.g. one run over the concatenated routed stream).
    layer = make_layer(2, 1, shared_mem=False)
    steer_router(layer, [10.0, -10.0])
    with torch.no_grad():
        layer.q_conv.weight[:, :-1] = 0
    T = 40
    sign = torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).expand(2, T)
    x = routed_inputs(sign)
    base = layer(x).hidden
    for parity in (0, 1):
        perturbed = x.clone()
        perturbed[:, parity::2, 1:] += torch.randn_like(perturbed[:, parity::2, 1:])
        out = layer(perturbed).hidden
        torch.testing.assert_close(out[:, 1 - parity :: 2], base[:, 1 - parity :: 2], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, parity::2], base[:, parity::2])


def test_router_keeps_no_fp32_copy_of_its_input_under_autocast() -> None:
    """Under autocast the router's fp32 logits are computed from the layer's bf16 input, which
    the projections keep anyway: no fp32 [B, T, D] copy of x is saved for the backward, and
    the gradients are those of an fp32 linear over that input."""
    d_model = 3 * H * K  # unlike any other activation's width
    layer = MoMAttention(d_model, num_heads=H, head_dim=K, num_memories=4, topk=2, backend="torch")
    x = torch.randn(2, 40, d_model, requires_grad=True)
    saved = []
    keep = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
    with keep, torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    weights = {id(p) for p in layer.parameters()}
    fp32_rows = [t for t in saved if t.dtype == torch.float32 and t.shape[-1:] == (d_model,)]
    assert not [t for t in fp32_rows if id(t) not in weights]

    u = x.detach().bfloat16().requires_grad_()
    u_fp32 = u.detach().float().requires_grad_()
    weight = layer.router.weight.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        probs = route(u, layer.router, 4, 2, True, torch.float32).probs
        want = F.linear(u_fp32, weight).softmax(-1)
    grad = torch.randn_like(probs)
    probs.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(probs, want, rtol=0, atol=0)
    torch.testing.assert_close(layer.router.weight.grad, weight.grad)
    assert u.grad.dtype == torch.bfloat16
    torch.testing.assert_close(u.grad, u_fp32.grad.bfloat16())
    out.hidden.float().sum().backward()  # x's gradient comes back through the cast, in fp32
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_aux_loss_and_loads_on_a_known_routing() -> None:
    weight = 1e-3
    layer = make_layer(4, 2, aux_loss_weight=weight, layer_idx=3)
    steer_router(layer, [2.0, 1.0, 0.0, -1.0])
    # 3/4 of the tokens have x_0 = +1 (top-2 = memories 0, 1), 1/4 have -1 (memories 3, 2).
    sign = torch.ones(2, 64)
    sign[:, ::4] = -1
    out = layer(routed_inputs(sign))

    softmax = [math.exp(z) for z in (2.0, 1.0, 0.0, -1.0)]
    softmax = [s / sum(softmax) for s in softmax]
    P = [0.75 * softmax[e] + 0.25 * softmax[3 - e] for e in range(4)]
    f = [0.375, 0.375, 0.125, 0.125]
    expected = weight * 4 * sum(fe * pe for fe, pe in zip(f, P, strict=True))
    assert out.aux_losses["router_balance"].item() == pytest.approx(expected, rel=1e-12)
    loads = out.stats["router_load"].tolist()
    assert loads == pytest.approx(f, rel=1e-12)


@pytest.mark.parametrize("num_memories,topk", [(3, 1), (4, 2), (3, 3)])
def test_stats_are_per_memory_loads_that_sum_to_one(num_memories: int, topk: int) -> None:
    layer = make_layer(num_memories, topk, layer_idx=1)
    out = layer(torch.randn(3, 50, D, dtype=F64))
    assert set(out.stats) == {"router_load"} and out.stats["router_load"].shape == (num_memories,)
    assert not out.stats["router_load"].requires_grad
    assert out.stats["router_load"].sum().item() == pytest.approx(1.0, rel=1e-12)
    assert set(out.aux_losses) == {"router_balance"} and out.aux_losses["router_balance"].requires_grad


def test_no_aux_loss_with_zero_weight() -> None:
    out = make_layer(3, 2, aux_loss_weight=0.0)(torch.randn(1, 10, D, dtype=F64))
    assert out.aux_losses == {} and out.stats["router_load"].shape == (3,)


def test_packed_loads_count_only_real_tokens() -> None:
    layer = make_layer(3, 2)
    lengths = [5, 1, 33]
    docs = [torch.randn(1, n, D, dtype=F64) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = layer(torch.cat(docs, dim=1), cu_seqlens=cu)
    separate = [layer(doc) for doc in docs]
    for tag, load in packed.stats.items():
        expected = sum(n * out.stats[tag] for n, out in zip(lengths, separate, strict=True)) / sum(lengths)
        torch.testing.assert_close(load, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        packed.hidden, torch.cat([out.hidden for out in separate], dim=1), rtol=1e-9, atol=1e-11
    )


def test_state_continues_the_full_forward() -> None:
    layer = make_layer(3, 2)
    x = torch.randn(2, 70, D, dtype=F64)
    full = layer(x).hidden
    state = layer.init_state(2, torch.device("cpu"), F64)
    # a chunked prompt, single decode steps, then a chunked continuation from a non-empty cache
    parts = [layer(x[:, :37], state=state).hidden]
    parts += [layer(x[:, t : t + 1], state=state).hidden for t in range(37, 50)]
    parts.append(layer(x[:, 50:], state=state).hidden)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-9, atol=1e-11)
    assert state.memory.dtype == F64 and state.routed.shape == (2, 3, H, K, K)
    assert state.shared.shape == (2, H, K, K)


def test_training_at_small_T_takes_one_chunked_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []

    def spy(name, fn):
        def wrapped(q, *args, **kwargs):
            calls.append((name, tuple(q.shape)))
            return fn(q, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(padded, "chunk_gated_delta_rule", spy("chunk", chunk_gated_delta_rule))
    monkeypatch.setattr(
        padded, "fused_recurrent_gated_delta_rule", spy("recurrent", fused_recurrent_gated_delta_rule)
    )
    layer = make_layer(4, 2)
    layer(torch.randn(2, 10, D, dtype=F64))
    assert calls == [("chunk", (2 * 5, 10, H, K))]  # B · (E + shared) rows, one call

    calls.clear()
    state = layer.init_state(2, torch.device("cpu"), F64)
    layer(torch.randn(2, 1, D, dtype=F64), state=state)
    assert calls == [("recurrent", (2 * 5, 1, H, K))]


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"topk": 0}, "model.mixer.topk"),
        ({"topk": 5, "num_memories": 4}, "model.mixer.topk"),
        ({"num_memories": 0, "topk": 1}, "model.mixer.num_memories"),
        ({"num_heads": 0}, "model.mixer.num_heads"),
        ({"head_dim": 0}, "model.mixer.head_dim"),
        ({"head_dim": 257}, "model.mixer.head_dim"),
        ({"head_dim": 256, "expand_v": 2}, "model.mixer.expand_v"),
        ({"head_dim": 8, "expand_v": 0.3}, "model.mixer.expand_v"),
        ({"aux_loss_weight": -1e-3}, "model.mixer.aux_loss_weight"),
        ({"conv_size": 0}, "model.mixer.conv_size"),
        ({"conv_size": 17}, "model.mixer.conv_size"),
        ({"topk": 64, "num_memories": 64}, "model.mixer.topk"),
        ({"norm_eps": 0.0}, "model.mixer.norm_eps"),
        ({"backend": "cuda"}, "model.mixer.backend"),
        ({"topk": "two"}, "model.mixer.topk"),
        ({"head_dim": None}, "model.mixer.head_dim"),
        ({"expand_v": True}, "model.mixer.expand_v"),
        ({"conv_size": 4.5}, "model.mixer.conv_size"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        MoMAttention(D, **kwargs)
    assert str(error.value).startswith(key) and "\n" not in str(error.value)
