"""The op families: for each, how to draw a case and how to check it.

A case is a JSON-able spec drawn from a ``Draw``; ``check(spec, device)`` builds its inputs
from torch's generator (seeded by the caller), runs the fast path (backend "triton", every
kernel buffer NaN-poisoned) and the PyTorch twin on the same rounded inputs, and measures both
against an fp64 reference: the op's own token-by-token reference where it has one, else the
formula written out in fp64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memlab.kernels import (
    buffers,
    causal_conv1d,
    causal_conv1d_update,
    chunk_gated_delta_rule,
    combine_routed,
    fused_recurrent_gated_delta_rule,
    gated_rmsnorm,
    l2norm,
    selective_scan,
    selective_state_update,
    topk_route,
)
from memlab.kernels.causal_conv1d.naive import naive_causal_conv1d
from memlab.kernels.compare import rel_err
from memlab.kernels.gated_delta_rule import naive_recurrent_gated_delta_rule
from memlab.kernels.gated_delta_rule.step import gated_delta_rule_step
from memlab.kernels.limits import (
    MAX_COMBINE_SLOTS,
    MAX_CONV_WIDTH,
    MAX_NORM_DIM,
    MAX_ROUTED_MEMORIES,
    MAX_STATE_SIZE,
)
from memlab.kernels.selective_scan import naive_selective_scan
from tests.conformance.check import FLOOR, Measure, as_fp64, bounds_for, measure, rounded, run
from tests.conformance.draw import DTYPES, Draw, gates


@dataclass(frozen=True)
class Family:
    """An op family of the conformance suite."""

    name: str
    draw: Callable[[Draw], dict]
    check: Callable[[dict, str], list[Measure]]


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def _compare(
    spec: dict,
    fast_fn: Callable,
    twin_fn: Callable,
    ref_fn: Callable,
    inputs: dict[str, torch.Tensor],
    dtypes: dict[str, torch.dtype],
    device: str,
    grads: tuple[str, ...],
    outs: tuple[str, ...],
    gradient_sums: tuple[str, ...] = (),
    fast_grads: bool = True,
    floors: dict[str, float] | None = None,
    fast_slack: float = 1.0,
    **kwargs: object,
) -> list[Measure]:
    """Fast and twin against the fp64 reference on the same rounded inputs (``floors``: as
    ``measure``'s; the fast path's bounds times ``fast_slack``)."""
    x = rounded(inputs, dtypes, device)
    ref, cot = run(ref_fn, as_fp64(x), grads, outs, cot_dtype=DTYPES[spec["dtype"]], **kwargs)
    fast, _ = run(fast_fn, x, grads if fast_grads else (), outs, cot, poison=True, **kwargs)
    twin, _ = run(twin_fn, x, grads, outs, cot, **kwargs)
    fast_ref = ref if fast_grads else {n: t for n, t in ref.items() if n in outs}
    bounds = bounds_for(spec["dtype"], gradient_sums)
    # Callers view outputs as they please (o.view(...)): no output may be a view with gaps.
    gaps = sum(not _dense(fast[n]) for n in outs if n in fast)
    dense = Measure("fast", "outputs with gaps", float(gaps), 0.0)
    fast_measures = measure("fast", fast, fast_ref, lambda name: fast_slack * bounds(name), floors)
    return [dense, *fast_measures, *measure("twin", twin, ref, bounds, floors)]


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` fills its storage without gaps, in any order of dimensions (a scan's
    channels-last output is dense; a slice of a padded output is not)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _cu_seqlens(spec: dict, device: str) -> torch.Tensor | None:
    docs = spec.get("docs")
    return None if docs is None else torch.tensor(docs, dtype=torch.int32, device=device)


# ---- gated delta rule, chunked and token by token ----


def _draw_gdn(d: Draw, cap: int) -> dict:
    spec = {"dtype": d.dtype(), "K": d.head_dim(), "V": d.head_dim(), "H": d.randint(1, 2 if d.tiny else 8)}
    T = d.length(cap)
    if d.random() < 0.3:
        spec |= {"B": 1, "T": T, "docs": d.documents(T)}
    else:
        spec |= {"B": d.batch(4), "T": T}
    spec |= {"h0": d.random() < 0.5, "gates": d.gate_kind()}
    spec["l2norm_in_kernel"] = d.random() < 0.2
    return spec


def _gdn_inputs(spec: dict) -> dict[str, torch.Tensor]:
    B, T, H, K, V = spec["B"], spec["T"], spec["H"], spec["K"], spec["V"]
    q, k = _randn(B, T, H, K), _randn(B, T, H, K)
    q, k = (3 * q, 3 * k) if spec["l2norm_in_kernel"] else (F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    x = {"q": q, "k": k, "v": _randn(B, T, H, V), "g": gates(spec["gates"], (B, T, H))}
    x["beta"] = torch.sigmoid(_randn(B, T, H))
    if spec["h0"]:
        N = B if spec.get("docs") is None else len(spec["docs"]) - 1
        x["initial_state"] = _randn(N, H, K, V)
    return x


# The chunked kernels round their intermediates (u, v_new, the masked q·kᵀ) to the input dtype,
# as flash-linear-attention's do, so in 16-bit the fast path lands 0.2 to 0.4 of TOL from fp64.
# With one value channel dv holds few elements and its error is heavy-tailed: 60 draws of
# bf16, K 96, V 1, T 63, gates near −20 on an H100 gave a median of 0.21 of TOL and a maximum
# of 1.08 (twin 0.29; at V 16 or 64 the maximum was 0.38).
ONE_VALUE_CHANNEL_SLACK = 2.0


def _check_gdn(spec: dict, device: str, chunked: bool) -> list[Measure]:
    x = _gdn_inputs(spec)
    dt = DTYPES[spec["dtype"]]
    op = chunk_gated_delta_rule if chunked else fused_recurrent_gated_delta_rule
    one_channel_16bit = chunked and spec["V"] == 1 and spec["dtype"] != "fp32"
    kwargs = dict(
        output_final_state=True,
        cu_seqlens=_cu_seqlens(spec, device),
        use_qk_l2norm_in_kernel=spec["l2norm_in_kernel"],
    )
    floors = {f"d{n}": _norm_floor(x[n].to(dt)) for n in ("q", "k")} if spec["l2norm_in_kernel"] else None
    return _compare(
        spec,
        lambda **a: op(**a, backend="triton"),
        lambda **a: op(**a, backend="torch"),
        naive_recurrent_gated_delta_rule,
        x,
        {"q": dt, "k": dt, "v": dt},
        device,
        grads=tuple(x),
        outs=("o", "S"),
        gradient_sums=("dg", "dbeta"),
        fast_grads=chunked,
        floors=floors,
        fast_slack=ONE_VALUE_CHANNEL_SLACK if one_channel_16bit else 1.0,
        **kwargs,
    )


GDN_CHUNK = Family(
    "gdn_chunk", lambda d: _draw_gdn(d, 1000), lambda spec, device: _check_gdn(spec, device, True)
)
GDN_RECURRENT = Family(
    "gdn_recurrent", lambda d: _draw_gdn(d, 130), lambda spec, device: _check_gdn(spec, device, False)
)


# ---- gated delta rule: one decoding step of several memories ----


def _draw_step(d: Draw) -> dict:
    spec = {"dtype": d.dtype(), "K": d.head_dim(), "V": d.head_dim(), "H": d.randint(1, 2 if d.tiny else 4)}
    spec |= {"W": d.randint(1, 4), "B": d.batch(4), "M": d.launch.randint(1, 3 if d.tiny else 6)}
    spec |= {"gates": d.gate_kind(), "unvisited": d.launch.random() < 0.7}
    # every memory visited at weight 1, given as weights = visited = None (a GDN layer's step);
    # q read from a wider row, as the layer's joined projection gives it
    return spec | {
        "implicit": not spec["unvisited"] and d.launch.random() < 0.5,
        "q_row": d.launch.random() < 0.5,
    }


def _check_step(spec: dict, device: str) -> list[Measure]:
    B, M, H, K, V, W = (spec[n] for n in ("B", "M", "H", "K", "V", "W"))
    weights = torch.rand(B, M, dtype=torch.float64)
    visited = torch.ones(B, M, dtype=torch.bool)
    if spec["unvisited"]:  # some memories not visited (state and tails stay), one visited at weight 0
        visited = torch.rand(B, M) >= 0.4
        weights = torch.where(torch.rand(B, M) < 0.2, 0.0, weights)
    g = gates(spec["gates"], (B, M, H))  # a = softplus⁻¹(−g / A) with A = 1: the drawn decay
    a = torch.where(g < -1e-12, torch.log(torch.expm1(-g.clamp(max=-1e-12))), -30.0)
    x = {
        "q": _randn(B, H * K + 5 * spec.get("q_row", False)),
        "kvb": _randn(B, M, H * (K + V + 1)),
        "a": a,
        "weights": weights,
    }
    x |= {"state": _randn(B, M, H, K, V), "q_tail": _randn(B, H * K, W - 1)}
    x |= {"k_tail": _randn(B, M, H * K, W - 1), "v_tail": _randn(B, M, H * V, W - 1)}
    x |= {"q_conv": _randn(H * K, W), "k_conv": _randn(H * K, W), "v_conv": _randn(H * V, W)}
    x |= {"A_log": torch.zeros(H, dtype=torch.float64), "dt_bias": torch.zeros(H, dtype=torch.float64)}
    dt = DTYPES[spec["dtype"]]
    dtypes = {n: dt for n in ("q", "kvb", "q_tail", "k_tail", "v_tail", "q_conv", "k_conv", "v_conv")}

    def step(backend):
        def fn(q, kvb, a, weights, state, q_tail, k_tail, v_tail, **params):
            state, q_tail, k_tail, v_tail = (t.clone() for t in (state, q_tail, k_tail, v_tail))
            k, v, b = kvb.split([H * K, H * V, H], dim=-1)  # k ‖ v adjacent, as a projection gives them
            q = q[:, : H * K]
            caches = {"state": state, "q_tail": q_tail, "k_tail": k_tail, "v_tail": v_tail}
            mixing = (None, None) if spec["implicit"] else (weights, visited.to(q.device))
            o = gated_delta_rule_step(q, k, v, a.to(b.dtype), b, *mixing, **caches, **params, backend=backend)
            return o, state, q_tail, k_tail, v_tail

        return fn

    return _compare(
        spec, step("triton"), step("torch"), step("torch"), x, dtypes, device,
        grads=(), outs=("o", "state", "q_tail", "k_tail", "v_tail"),
    )  # fmt: skip


GDN_STEP = Family("gdn_step", _draw_step, _check_step)


# ---- selective scan and its decode step ----


SCAN_DIMS = (1, 2, 3, 8, 15, 16, 17, 64, 100, 256)
STATE_SIZES = (1, 2, 3, 4, 8, 15, 16, 17, 32, 64, 128, MAX_STATE_SIZE)


def _draw_scan(d: Draw, classed: bool = True) -> dict:
    """A scan's case, its length in the shape's length class (``Draw.scan_class``) if
    ``classed``, so that the cases of a shape compile the kernels once."""
    dim = d.choice(SCAN_DIMS[:4] if d.tiny else SCAN_DIMS)
    N = d.choice(STATE_SIZES[:8] if d.tiny else STATE_SIZES)
    groups = [None, *(g for g in range(1, dim + 1) if dim % g == 0)]
    spec = {"dtype": d.dtype(), "batch": d.batch(4), "dim": dim, "N": N}
    cap = 40 if d.tiny else 1000
    spec |= {
        "L": d.length(cap, d.scan_class(cap) if classed else None),
        "groups_B": d.choice(groups),
        "groups_C": d.choice(groups),
    }
    spec |= {name: d.random() < 0.6 for name in ("D", "z", "delta_bias", "softplus", "last_state")}
    spec["channels_last"] = d.random() < 0.4
    return spec


def _check_scan(spec: dict, device: str) -> list[Measure]:
    batch, dim, N, L = spec["batch"], spec["dim"], spec["N"], spec["L"]

    def bc(groups: int | None) -> torch.Tensor:
        return _randn(batch, N, L) if groups is None else _randn(batch, groups, N, L)

    seq = (lambda: _randn(batch, L, dim).mT) if spec["channels_last"] else (lambda: _randn(batch, dim, L))
    delta = seq() if spec["softplus"] else 0.5 * seq().abs()
    x = {"u": seq(), "delta": delta, "A": -torch.exp(_randn(dim, N)), "B": bc(spec["groups_B"])}
    x["C"] = bc(spec["groups_C"])
    x |= {"D": _randn(dim)} if spec["D"] else {}
    x |= {"z": seq()} if spec["z"] else {}
    # dt = delta + bias stays positive without the softplus, as in Mamba (else the state grows).
    bias = 0.5 * _randn(dim) if spec["softplus"] else 0.5 * _randn(dim).abs()
    x |= {"delta_bias": bias} if spec["delta_bias"] else {}
    dt = DTYPES[spec["dtype"]]
    outs = ("y", "last") if spec["last_state"] else ("y",)
    kwargs = dict(delta_softplus=spec["softplus"], return_last_state=spec["last_state"])
    return _compare(
        spec,
        lambda **a: selective_scan(**a, backend="triton"),
        lambda **a: selective_scan(**a, backend="torch"),
        naive_selective_scan,
        x,
        {"u": dt, "delta": dt, "B": dt, "C": dt, "z": dt},
        device,
        grads=tuple(x),
        outs=outs,
        gradient_sums=("dA", "dD", "ddelta_bias", "dB", "dC"),
        **kwargs,
    )


SELECTIVE_SCAN = Family("selective_scan", _draw_scan, _check_scan)


def _draw_state_update(d: Draw) -> dict:
    spec = _draw_scan(d, classed=False)
    del spec["L"], spec["last_state"], spec["channels_last"]
    spec["strided_state"] = d.random() < 0.3
    spec["strided_inputs"] = d.random() < 0.3  # x, dt, z, B, C as views of wider rows
    # Mamba's step: dt as the low-rank [batch, R] with dt_proj [dim, R] (dt then needs the
    # softplus to stay a step size), A as A_log
    spec["dt_rank"] = d.choice((1, 3, 16, 48, 100)) if spec["softplus"] and d.random() < 0.4 else None
    spec["A_log"] = d.random() < 0.4
    return spec


def _reference_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step of the recurrence, written out in fp64: (out [batch, dim], new state)."""
    dim = state.shape[1]

    def per_channel(BC: torch.Tensor) -> torch.Tensor:
        return BC.unsqueeze(1) if BC.dim() == 2 else BC.repeat_interleave(dim // BC.shape[1], dim=1)

    dt = dt + (dt_bias if dt_bias is not None else 0)
    dt = F.softplus(dt) if dt_softplus else dt
    new = torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * per_channel(B)
    out = (new * per_channel(C)).sum(-1) + (D * x if D is not None else 0)
    return (out * F.silu(z) if z is not None else out), new


def _check_state_update(spec: dict, device: str) -> list[Measure]:
    batch, dim, N = spec["batch"], spec["dim"], spec["N"]

    def bc(groups: int | None) -> torch.Tensor:
        return _randn(batch, N) if groups is None else _randn(batch, groups, N)

    x = {"x": _randn(batch, dim), "dt": _randn(batch, dim) if spec["softplus"] else _randn(batch, dim).abs()}
    R = spec.get("dt_rank")
    if R:
        x |= {"dt": _randn(batch, R), "dt_proj": R**-0.5 * _randn(dim, R)}
    A_log = _randn(dim, N)
    x |= {"A_log": A_log} if spec.get("A_log") else {"A": -torch.exp(A_log)}
    x |= {"B": bc(spec["groups_B"]), "C": bc(spec["groups_C"])}
    x |= {"D": _randn(dim)} if spec["D"] else {}
    x |= {"z": _randn(batch, dim)} if spec["z"] else {}
    bias = 0.5 * _randn(dim) if spec["softplus"] else 0.5 * _randn(dim).abs()
    x |= {"dt_bias": bias} if spec["delta_bias"] else {}
    dt = DTYPES[spec["dtype"]]
    x = rounded(x, {"x": dt, "dt": dt, "B": dt, "C": dt, "z": dt, "dt_proj": dt}, device)
    state = _randn(batch, dim, N)
    state = state.to(device)
    full = as_fp64(x)
    if R:
        full["dt"] = full["dt"] @ full.pop("dt_proj").T
    if "A_log" in full:
        full["A"] = -torch.exp(full.pop("A_log"))
    ref_out, ref_state = _reference_state_update(state.clone(), **full, dt_softplus=spec["softplus"])
    ref = {"out": ref_out, "state": ref_state}
    measures = []
    if spec.get("strided_inputs"):  # as Mamba's step hands them over: slices of projections
        for n in ("x", "dt", "z", "B", "C"):
            if n in x:
                x[n] = torch.cat([x[n], torch.full_like(x[n], torch.nan)], -1)[..., : x[n].shape[-1]]
    for path, backend in (("fast", "triton"), ("twin", "torch")):
        s = state.float()
        if spec["strided_state"]:  # the state as a slice of a wider cache
            s = torch.cat([s, torch.zeros_like(s)], dim=-1)[..., :N]
        with torch.no_grad(), buffers.poisoned(path == "fast"):
            args = {"A": None} | x  # A may be given as A_log
            out = selective_state_update(s, **args, dt_softplus=spec["softplus"], backend=backend)
        measures += measure(path, {"out": out, "state": s}, ref, bounds_for(spec["dtype"]))
    return measures


STATE_UPDATE = Family("state_update", _draw_state_update, _check_state_update)


# ---- causal conv1d, l2norm, gated RMSNorm, routed combine ----


def _draw_conv(d: Draw) -> dict:
    T = d.length(1000)
    channels = (1, 2, 3, 8, 15, 16, 17, 64, 100, 129, 256, 1000)
    spec = {"dtype": d.dtype(), "C": d.choice(channels[:9] if d.tiny else channels)}
    spec |= {"W": d.randint(1, MAX_CONV_WIDTH), "T": T, "bias": d.random() < 0.7, "silu": d.random() < 0.6}
    spec |= {"B": 1, "docs": d.documents(T)} if d.random() < 0.3 else {"B": d.batch(4)}
    spec["strided"] = d.random() < 0.3  # x as half of a wider projection's output
    return spec


def _check_conv(spec: dict, device: str) -> list[Measure]:
    B, T, C, W = spec["B"], spec["T"], spec["C"], spec["W"]
    x = {"x": _randn(B, T, 2 * C) if spec["strided"] else _randn(B, T, C), "weight": _randn(C, W) / W**0.5}
    x |= {"bias": _randn(C)} if spec["bias"] else {}
    cu = _cu_seqlens(spec, device)
    act = "silu" if spec["silu"] else None

    def call(backend: str | None):
        def fn(x, weight, bias=None):
            x = x[..., :C] if spec["strided"] else x
            if backend is None:
                return naive_causal_conv1d(x, weight, bias, cu_seqlens=cu, activation=act)
            return causal_conv1d(x, weight, bias, cu_seqlens=cu, activation=act, backend=backend)

        return fn

    dt = DTYPES[spec["dtype"]]
    return _compare(
        spec, call("triton"), call("torch"), call(None), x, {"x": dt}, device,
        grads=tuple(x), outs=("y",), gradient_sums=("dweight", "dbias"),
    )  # fmt: skip


CAUSAL_CONV1D = Family("causal_conv1d", _draw_conv, _check_conv)


def _draw_conv_update(d: Draw) -> dict:
    channels = (1, 2, 3, 8, 15, 16, 17, 64, 100, 256, 1000, 2048)
    spec = {"dtype": d.dtype(), "C": d.choice(channels[:8] if d.tiny else channels)}
    return spec | {"W": d.randint(1, MAX_CONV_WIDTH), "B": d.batch(4), "bias": d.random() < 0.7}


def _check_conv_update(spec: dict, device: str) -> list[Measure]:
    B, C, W = spec["B"], spec["C"], spec["W"]
    x = {"x": _randn(B, 2 * C), "tail": _randn(B, C, W - 1), "weight": _randn(C, W)}
    if spec["bias"]:
        x["bias"] = _randn(C)
    dt = DTYPES[spec["dtype"]]

    def step(backend):
        def fn(x, tail, **params):  # x as half of a wider projection's output, as Mamba's
            tail = tail.clone()
            return causal_conv1d_update(x[:, :C], tail, **params, backend=backend), tail

        return fn

    return _compare(
        spec, step("triton"), step("torch"), step("torch"), x, {"x": dt, "tail": dt}, device,
        grads=(), outs=("y", "tail"),
    )  # fmt: skip


CONV_UPDATE = Family("conv_update", _draw_conv_update, _check_conv_update)


def _norm_dim(d: Draw) -> int:
    dims = (1, 2, 7, 15, 16, 17, 64, 100, 255, 256, 257, 1000, 2048, 4097, MAX_NORM_DIM)
    return d.choice(dims[:10] if d.tiny else dims)


def _draw_norm(d: Draw) -> dict:
    D = _norm_dim(d)
    rows = d.launch.choice((1, 2, 3, 17, 100, 1000)[: 4 if d.tiny else 6])
    if D >= 2048:
        rows = min(rows, 17)
    return {"dtype": d.dtype(), "D": D, "shape": [rows, d.launch.randint(1, 3)]}


def _norm_floor(x: torch.Tensor, eps: float = 1e-6, scale: torch.Tensor | float = 1.0) -> float:
    """The zero floor of the gradient of a normalized ``x`` (rows over the last dimension).
    d x = r·(d y − (y·d y)·y), r = 1/‖x‖, is of scale r·``scale``, not 1, and cancels to about
    eps·r³ at one channel: any fp32 path misses it by a few ulps of r·``scale``, which is far
    over FLOOR's 1e-3·TOL where a row is small."""
    r = (x.double().square().sum(-1, keepdim=True) + eps).rsqrt()
    return max(FLOOR, FLOOR * (r * scale).square().mean().sqrt().item())


def _check_l2norm(spec: dict, device: str) -> list[Measure]:
    x = {"x": _randn(*spec["shape"], spec["D"])}
    dt = DTYPES[spec["dtype"]]

    def reference(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)

    floors = {"dx": _norm_floor(x["x"].to(dt))}
    return _compare(
        spec, lambda x: l2norm(x, backend="triton"), lambda x: l2norm(x, backend="torch"), reference,
        x, {"x": dt}, device, grads=("x",), outs=("y",), floors=floors,
    )  # fmt: skip


def _check_rmsnorm(spec: dict, device: str) -> list[Measure]:
    shape = (*spec["shape"], spec["D"])
    x = {"o": _randn(*shape), "gate": _randn(*shape), "weight": 1 + 0.5 * _randn(spec["D"])}
    dt = DTYPES[spec["dtype"]]

    def reference(o, gate, weight):
        return o * torch.rsqrt((o * o).mean(-1, keepdim=True) + 1e-5) * weight * F.silu(gate)

    # the RMS over D is ‖o‖/√D: d o is of scale √D·r·weight·silu(gate)
    D, gate = spec["D"], x["gate"].to(dt).double()
    floors = {"do": _norm_floor(x["o"].to(dt), 1e-5 * D, D**0.5 * x["weight"] * F.silu(gate))}
    return _compare(
        spec,
        lambda **a: gated_rmsnorm(**a, eps=1e-5, backend="triton"),
        lambda **a: gated_rmsnorm(**a, eps=1e-5, backend="torch"),
        reference, x, {"o": dt, "gate": dt}, device,
        grads=tuple(x), outs=("y",), gradient_sums=("dweight",), floors=floors,
    )  # fmt: skip


L2NORM = Family("l2norm", _draw_norm, _check_l2norm)
GATED_RMSNORM = Family("gated_rmsnorm", _draw_norm, _check_rmsnorm)


def _draw_combine(d: Draw) -> dict:
    S = d.choice((1, 2, 3, 5, 8, MAX_COMBINE_SLOTS)[: 5 if d.tiny else 6])
    R = d.launch.choice((1, 2, 17, 100, 1000)[: 4 if d.tiny else 5])
    F_ = d.choice((1, 3, 16, 64, 100, 1000, 2056)[: 5 if d.tiny else 7])
    return {"dtype": d.dtype(), "R": R, "S": S, "F": F_, "spare_rows": d.launch.randint(0, 5)}


def _check_combine(spec: dict, device: str) -> list[Measure]:
    R, S, F_ = spec["R"], spec["S"], spec["F"]
    rows = R * S + spec["spare_rows"]  # rows no entry names get a zero gradient
    index = torch.randperm(rows)[: R * S].view(R, S).to(device)
    x = {"values": _randn(rows, F_), "weights": torch.rand(R, S, dtype=torch.float64)}
    dt = DTYPES[spec["dtype"]]

    def reference(values, weights):
        return (weights[..., None] * values[index]).sum(1)

    return _compare(
        spec,
        lambda **a: combine_routed(index=index, **a, backend="triton"),
        lambda **a: combine_routed(index=index, **a, backend="torch"),
        reference, x, {"values": dt, "weights": dt}, device,
        grads=tuple(x), outs=("out",), gradient_sums=("dweights",),
    )  # fmt: skip


COMBINE_ROUTED = Family("combine_routed", _draw_combine, _check_combine)

# ---- top-k routing of decoding tokens ----

# A token whose k-th and (k+1)-th fp64 logits are closer than fp32 logits are accurate
# (ROUTE_TIE · sqrt(D) · max |logit|), or whose k-th probability is below what fp32 holds (exp
# underflows, subnormals may flush to 0), may be routed either way by a correct fp32 path: a
# tie, not an error.
ROUTE_TIE, ROUTE_FP32_ZERO = 1e-6, 1e-30
# weights, computed in fp32 whatever the inputs' dtype: a logit off by the resolution above
# moves a renormalised weight by up to twice as much, relatively
ROUTE_TOL = 1e-5


def _draw_route(d: Draw) -> dict:
    E = d.randint(2, 8 if d.tiny else MAX_ROUTED_MEMORIES)
    spec = {"dtype": d.dtype(), "E": E, "topk": d.randint(1, E), "shared_mem": d.random() < 0.5}
    spec |= {"D": d.choice((1, 3, 8, 16, 40) if d.tiny else (1, 8, 15, 64, 200, 1024, 2048))}
    spec |= {"N": d.launch.choice((0, 1, 2, 3, 16, 64)), "sharp": d.launch.random() < 0.2}
    return spec


def _check_route(spec: dict, device: str) -> list[Measure]:
    """fast and twin against fp64 on the same rounded inputs: equal routing except at ties,
    weights within ROUTE_TOL (or twice the logits' resolution) on the rows routed alike.
    ``sharp`` scales the logits until some chosen probabilities underflow to 0 (still visited)."""
    N, D, E, k = spec["N"], spec["D"], spec["E"], spec["topk"]
    scale = 300.0 if spec["sharp"] else 3.0
    dt = DTYPES[spec["dtype"]]
    x = _randn(N, D).to(device=device, dtype=dt)
    router = (scale * D**-0.5 * _randn(E, D)).to(device=device, dtype=dt)
    ref = topk_route(x.double(), router.double(), k, spec["shared_mem"], backend="torch")
    logits = F.linear(x.double(), router.double())
    top = logits.softmax(-1).topk(min(k + 1, E), dim=-1).values
    sorted_logits = logits.topk(min(k + 1, E), dim=-1).values
    resolution = ROUTE_TIE * D**0.5 * logits.abs().amax(-1)
    gap = sorted_logits[:, k - 1] - sorted_logits[:, k] - resolution if k < E else torch.ones(N)
    bound = max(ROUTE_TOL, 2 * resolution.max().item()) if N else ROUTE_TOL
    measures = []
    for path in ("fast", "twin"):
        backend = "triton" if path == "fast" else "torch"
        weights, visited = topk_route(x, router, k, spec["shared_mem"], backend=backend)
        alike = (visited == ref[1]).all(-1)
        strict = (gap.to(alike.device) > 0) & (top[:, k - 1].to(alike.device) > ROUTE_FP32_ZERO)
        off = (~alike & strict).sum().item()
        measures.append(Measure(path, "rows routed apart off a tie", float(off), 0.0))
        measures.append(Measure(path, "weights", rel_err(weights[alike], ref[0][alike]), bound))
    return measures


TOPK_ROUTE = Family("topk_route", _draw_route, _check_route)

FAMILIES = {
    f.name: f
    for f in (
        GDN_CHUNK,
        GDN_RECURRENT,
        GDN_STEP,
        SELECTIVE_SCAN,
        STATE_UPDATE,
        CAUSAL_CONV1D,
        CONV_UPDATE,
        L2NORM,
        GATED_RMSNORM,
        COMBINE_ROUTED,
        TOPK_ROUTE,
    )
}
