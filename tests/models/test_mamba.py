"""Mamba-1 layer against a token-by-token reference written from the Mamba-1 equations (outputs
and gradients, fp64), its initialisation, decoding from a state (prefill in pieces, steps,
prefill again), packed documents, config errors, and (under Triton's interpreter) its Triton
path against its PyTorch one."""

from __future__ import annotations

import copy
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from memlab.errors import ConfigError
from memlab.kernels.compare import rel_err
from memlab.models.layers import Mamba
from tests.interpreter import interpreted, run_under_interpreter

F64 = torch.float64
D, N = 16, 4


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_layer(**kwargs) -> Mamba:
    """A float64 layer whose per-channel parameters differ from channel to channel (the
    initial A_log rows and D are all alike, which would hide a mix-up of channels or states)."""
    layer = Mamba(D, d_state=N, **{"dt_rank": 3, "dt_min": 0.01, "dt_max": 0.5, **kwargs}).double()
    with torch.no_grad():
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
        layer.D.normal_()
        if layer.conv1d.bias is not None:
            layer.conv1d.bias.normal_(0, 0.5)
    return layer


def reference(layer: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The layer's output [B, T, D], one token at a time, straight from the Mamba-1 equations."""
    B, T, _ = x.shape
    E, W = layer.d_inner, layer.d_conv
    A = -torch.exp(layer.A_log)  # [E, N]
    conv_w = layer.conv1d.weight[:, 0]  # [E, W]; tap W−1 multiplies the current input
    conv_b = layer.conv1d.bias if layer.conv1d.bias is not None else torch.zeros(E, dtype=x.dtype)
    outputs = []
    for b in range(B):
        h = x.new_zeros(E, layer.d_state)
        history: list[torch.Tensor] = []
        for t in range(T):
            x_in, z = layer.in_proj(x[b, t]).split(E)
            history.append(x_in)
            taps = sum(conv_w[:, W - 1 - s] * history[-1 - s] for s in range(min(W, len(history))))
            u = F.silu(taps + conv_b)
            dt_low, B_t, C_t = layer.x_proj(u).split([layer.dt_rank, layer.d_state, layer.d_state])
            dt = F.softplus(layer.dt_proj(dt_low))  # [E]
            h = torch.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B_t[None, :]
            y = (h @ C_t + layer.D * u) * F.silu(z)
            outputs.append(layer.out_proj(y))
    return torch.stack(outputs).view(B, T, -1)


@pytest.mark.parametrize("d_conv,bias,conv_bias", [(4, False, True), (1, True, False), (3, True, True)])
def test_forward_matches_reference(d_conv: int, bias: bool, conv_bias: bool) -> None:
    layer = make_layer(d_conv=d_conv, bias=bias, conv_bias=conv_bias)
    x = torch.randn(2, 19, D, dtype=F64)
    out = layer(x)
    assert out.hidden.shape == x.shape and out.hidden.dtype == F64
    assert out.aux_losses == {} and out.stats == {}
    assert rel_err(out.hidden, reference(layer, x)) < 1e-12


def test_gradients_match_reference() -> None:
    layer = make_layer()
    x = torch.randn(2, 13, D, dtype=F64, requires_grad=True)
    weight = torch.randn(2, 13, D, dtype=F64)
    params = {
        "A_log": layer.A_log,
        "D": layer.D,
        "dt_proj.bias": layer.dt_proj.bias,
        "dt_proj.weight": layer.dt_proj.weight,
        "conv1d.weight": layer.conv1d.weight,
        "conv1d.bias": layer.conv1d.bias,
        "x_proj.weight": layer.x_proj.weight,
        "in_proj.weight": layer.in_proj.weight,
    }
    inputs = [x, *params.values()]
    got = torch.autograd.grad((layer(x).hidden * weight).sum(), inputs)
    want = torch.autograd.grad((reference(layer, x) * weight).sum(), inputs)
    for name, g, w in zip(["x", *params], got, want, strict=True):
        assert rel_err(g, w) < 1e-10, name


def test_initialisation() -> None:
    dt_min, dt_max = 1e-3, 1e-1
    layer = Mamba(64, d_state=16, expand=4, dt_min=dt_min, dt_max=dt_max)
    E = layer.d_inner
    assert E == 256 and layer.dt_rank == 4  # ceil(64 / 16)
    torch.testing.assert_close(layer.A_log, torch.arange(1.0, 17.0).log().expand(E, 16))
    torch.testing.assert_close(layer.D, torch.ones(E))
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay
    assert layer.dt_proj.weight.abs().max() <= layer.dt_rank**-0.5
    dt = F.softplus(layer.dt_proj.bias.double())  # the bias is softplus⁻¹ of the initial dt
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    # log-uniform: log dt spreads over the whole range, about half of it below the midpoint
    log_dt = dt.log()
    assert log_dt.min() < math.log(dt_min) + 0.5 and log_dt.max() > math.log(dt_max) - 0.5
    below = (log_dt < (math.log(dt_min) + math.log(dt_max)) / 2).double().mean()
    assert 0.35 < below < 0.65
    floored = Mamba(64, dt_min=1e-5, dt_max=1e-3, dt_init_floor=1e-4)
    assert F.softplus(floored.dt_proj.bias.double()).min() >= 1e-4 * (1 - 1e-5)


def test_prefill_in_pieces_then_steps_equals_full_forward() -> None:
    """A prefill continuing a non-empty state (after a prefill and after decoding steps) and
    single steps all equal one forward pass over the whole sequence."""
    layer = make_layer()
    x = torch.randn(2, 31, D, dtype=F64)
    full = layer(x).hidden
    state = layer.init_state(2, torch.device("cpu"), F64)
    pieces = [(0, 7), (7, 19), (19, 20), (20, 21), (21, 22), (22, 28), (28, 29), (29, 31)]
    parts = [layer(x[:, s:e], state=state).hidden for s, e in pieces]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-10, atol=1e-10)
    assert state.ssm.shape == (2, layer.d_inner, N) and state.conv_tail.shape == (2, layer.d_inner, 3)


def test_state_stays_float32_in_a_bfloat16_model() -> None:
    layer = make_layer().to(torch.bfloat16)
    x = torch.randn(2, 9, D, dtype=torch.bfloat16)
    state = layer.init_state(2, torch.device("cpu"), torch.bfloat16)
    out = [layer(x[:, :6], state=state).hidden]
    out += [layer(x[:, t : t + 1], state=state).hidden for t in range(6, 9)]
    assert all(o.dtype == torch.bfloat16 for o in out)
    assert state.ssm.dtype == torch.float32 and state.conv_tail.dtype == torch.bfloat16
    assert rel_err(torch.cat(out, 1).double(), layer(x).hidden.double()) < 2e-2


def test_packed_documents_equal_separate_runs() -> None:
    layer = make_layer()
    lengths = [3, 1, 0, 25, 6]  # a length-1 document and an empty one
    docs = [torch.randn(1, n, D, dtype=F64) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed = layer(torch.cat(docs, dim=1), cu_seqlens=cu).hidden
    separate = torch.cat([layer(d).hidden for d in docs if d.shape[1]], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-12, atol=1e-12)


def test_packed_input_refuses_a_state_or_several_rows() -> None:
    layer = make_layer()
    cu = torch.tensor([0, 2, 5])
    state = layer.init_state(1, torch.device("cpu"), F64)
    with pytest.raises(ValueError, match="state"):
        layer(torch.randn(1, 5, D, dtype=F64), state=state, cu_seqlens=cu)
    with pytest.raises(ValueError, match="B must be 1"):
        layer(torch.randn(2, 5, D, dtype=F64), cu_seqlens=cu)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"d_state": 0}, r"model\.mixer\.d_state must be in 1\.\.256 \(got 0\)"),
        ({"d_state": 257}, r"model\.mixer\.d_state must be in 1\.\.256 \(got 257\)"),
        ({"d_conv": 0}, r"model\.mixer\.d_conv must be in 1\.\.16 \(got 0\)"),
        ({"d_conv": 17}, r"model\.mixer\.d_conv must be in 1\.\.16 \(got 17\)"),
        ({"expand": 0}, r"model\.mixer\.expand must be > 0"),
        ({"expand": 1.03}, r"model\.mixer\.expand .* whole number"),
        ({"dt_rank": 0}, r"model\.mixer\.dt_rank must be 'auto' or an integer >= 1 \(got 0\)"),
        ({"dt_rank": "full"}, r"model\.mixer\.dt_rank .*'full'"),
        ({"dt_min": 0.1, "dt_max": 0.1}, r"model\.mixer\.dt_min and model\.mixer\.dt_max"),
        ({"dt_min": 0.0}, r"0 < dt_min < dt_max"),
        ({"dt_init_floor": -1.0}, r"model\.mixer\.dt_init_floor must be >= 0"),
        ({"backend": "cuda"}, r"model\.mixer\.backend must be one of .auto., .triton., .torch. or null"),
        ({"d_state": None}, r"model\.mixer\.d_state must be an integer \(got None\)"),
        ({"dt_min": "x"}, r"model\.mixer\.dt_min must be a number \(got 'x'\)"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Mamba(D, **kwargs)


def test_triton_path_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize("packed", [False, True])
def test_triton_path_equals_torch_path(packed: bool) -> None:
    # The Triton path hands the scan transposed views of the [B, T, channels] activations (read
    # in place as channels-last, z copied) and packed documents to the conv in one call.
    layer = make_layer().float()  # fp32: what the Triton kernels compute in
    twin = copy.deepcopy(layer)
    layer.backend, twin.backend = "triton", "torch"
    x = torch.randn(1 if packed else 2, 21, D)
    cu_seqlens = torch.tensor([0, 1, 1, 9, 21]) if packed else None  # an empty and a 1-token document
    weight = torch.randn(x.shape[0], 21, D)
    results = []
    for module in (layer, twin):
        leaf = x.clone().requires_grad_()
        hidden = module(leaf, cu_seqlens=cu_seqlens).hidden
        grads = torch.autograd.grad((hidden * weight).sum(), [leaf, *module.parameters()])
        results.append([hidden, *grads])
    for got, want in zip(*results, strict=True):
        assert rel_err(got, want) < 1e-5


@interpreted
def test_triton_step_equals_torch_step() -> None:
    # The decoding step: the conv update and the state update kernels, fed views of in_proj's
    # and x_proj's outputs, continue a prefill as the twin does.
    layer = make_layer().float()
    x = torch.randn(2, 9, D)
    states = []
    for backend in ("triton", "torch"):
        layer.backend = "torch"
        state = layer.init_state(2, x.device, torch.float32)
        with torch.no_grad():
            layer(x[:, :6], state=state)
            layer.backend = backend
            out = [layer(x[:, t : t + 1], state=state).hidden for t in range(6, 9)]
        states.append((torch.cat(out, 1), state.conv_tail, state.ssm))
    for got, want in zip(*states, strict=True):
        assert rel_err(got, want) < 1e-5
