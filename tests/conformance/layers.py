"""The layer families: MoM, Mamba and MemMamba on random configurations, fast path against
the PyTorch twin (same weights, same inputs, same precision) and the twin against the layer
in fp64.

A quantity passes when the twin is within its bound of fp64 and the fast path is as accurate
as the twin: error(fast) <= 2·error(twin) + tol. MoM first checks that the fast path routes
every token as the twin does; fp64 judges only where it routes alike too (a router's near-tied
logits may pick other memories in another precision, a jump rather than an error of either
path), and otherwise the fast path is compared with the twin directly.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from memlab.kernels.compare import rel_err
from memlab.kernels.limits import MAX_CONV_WIDTH
from memlab.models import LanguageModel
from memlab.models.layers import Mamba, MemMamba, MoMAttention
from tests.conformance.check import FLOOR, Measure
from tests.conformance.draw import Draw, length_class
from tests.conformance.ops import STATE_SIZES, Family

# fast <= 2·twin + LAYER_TOL against fp64; the twin's own check is its fp32 run, within
# TWIN_TOL of fp64. In bf16 the twin sets the fast path's bound but passes none of its own:
# rounding alone may move an ill-conditioned quantity far from fp64 (a head of one channel,
# whose l2 norm is a sign, moves d x by three quarters of its norm when only the inputs and
# weights are rounded to bf16).
LAYER_TOL = {"fp32": 1e-4, "bf16": 1e-2}
TWIN_TOL = 1e-3
# A MoM head of one channel: its l2 norm q/sqrt(q²+eps) is a step whose slope near q = 0 is
# 1/sqrt(eps), so fp32 rounding inside the layer moves its weights' gradients by up to ~5e-3.
# In bf16 that slope makes every gradient ill-conditioned (the bf16 twin lands 15-25 % from
# fp64, and the fast path anywhere up to ~3 times as far: 30 draws on an H100), so such cases
# judge the output and the routing; the fp32 cases of one channel judge the gradients.
TWIN_TOL_ONE_CHANNEL = 1e-2
# MoM fast against twin; its per-head decay parameters' gradients, sums over every token of
# terms of both signs, differ between two correct bf16 paths by up to several percent.
MOM_TOL = {"fp32": 2e-3, "bf16": 3e-2}
MOM_DECAY_GRADS, MOM_DECAY_TOL_BF16 = ("dA_log", "ddt_bias"), 1e-1
FUNCTIONALS = 4  # random functionals of the output whose gradients are stacked


def _with_backend(model: torch.nn.Module, backend: str, dtype: torch.dtype) -> torch.nn.Module:
    twin = copy.deepcopy(model).to(dtype)
    for module in twin.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    return twin


def _forward_grads(model: torch.nn.Module, x: torch.Tensor, autocast: bool, **kwargs) -> dict:
    """The output and, stacked over FUNCTIONALS fixed random functionals of it, the gradients of
    x (when floating) and of every parameter; "stats" holds the mixer's statistics."""
    leaf = x.detach().requires_grad_(x.is_floating_point())
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else nullcontext():
        out = model(leaf, **kwargs)
    hidden = out.logits if hasattr(out, "logits") else out.hidden
    named = ({"dx": leaf} if leaf.requires_grad else {}) | {f"d{n}": p for n, p in model.named_parameters()}
    gen = torch.Generator(device=x.device).manual_seed(0)
    per_functional = []
    for k in range(FUNCTIONALS):
        weight = torch.randn(hidden.shape, generator=gen, device=x.device, dtype=torch.float64)
        loss = (hidden.double() * weight).sum()
        per_functional.append(
            torch.autograd.grad(loss, list(named.values()), retain_graph=k + 1 < FUNCTIONALS)
        )
    stacked = {n: torch.stack(g) for n, g in zip(named, zip(*per_functional, strict=True), strict=True)}
    stats = getattr(out, "stats", None) or {}
    if isinstance(stats, list):  # a language model's, one dict per layer
        stats = {f"layer{i}/{n}": v for i, layer in enumerate(stats) for n, v in layer.items()}
    return {"out": hidden.detach(), **stacked, "stats": {n: v.detach() for n, v in stats.items()}}


def _paths(model: torch.nn.Module, x: torch.Tensor, dtype: str, **kwargs: object) -> dict[str, dict]:
    """_forward_grads of the fast path ("fast"), the twin ("twin") in ``dtype`` (bf16: fp32
    weights under autocast), the twin in fp32 ("twin fp32") and the fp64 layer ("ref")."""
    xf = x.float() if x.is_floating_point() else x
    autocast = dtype == "bf16"
    paths = {
        "fast": _forward_grads(_with_backend(model, "triton", torch.float32), xf, autocast, **kwargs),
        "twin": _forward_grads(_with_backend(model, "torch", torch.float32), xf, autocast, **kwargs),
        "ref": _forward_grads(_with_backend(model, "torch", torch.float64), x, False, **kwargs),
    }
    if autocast:
        paths["twin fp32"] = _forward_grads(_with_backend(model, "torch", torch.float32), xf, False, **kwargs)
    return paths


def _as_accurate(spec: dict, paths: dict[str, dict], twin_tol: float = TWIN_TOL) -> list[Measure]:
    """The twin's fp32 run within ``twin_tol`` of ref; fast within 2·(twin's error) + its bound."""
    tol, ref, twin = LAYER_TOL[spec["dtype"]], paths["ref"], paths["twin"]
    measures = []
    for name, r in ref.items():
        if name == "stats":
            continue
        twin_err = rel_err(twin[name], r, FLOOR)
        twin32 = paths.get("twin fp32")
        twin32_err = twin_err if twin32 is None else rel_err(twin32[name], r, FLOOR)
        measures.append(Measure("twin", name, twin32_err, twin_tol))
        bound = 2 * twin_err + tol if twin_err == twin_err else tol
        measures.append(Measure("fast", name, rel_err(paths["fast"][name], r, FLOOR), bound))
    return measures


def _lengths(d: Draw, spec: dict, cap: int) -> dict:
    T = d.length(cap)
    if d.random() < 0.3:
        return spec | {"B": 1, "T": T, "docs": d.documents(T)}
    return spec | {"B": d.batch(3), "T": T}


def _scanned_lengths(d: Draw, spec: dict, cap: int, packed: bool = True) -> dict:
    """``_lengths`` for a layer over the selective scan, which it runs on each document alone:
    the length and every document's length in the shape's length class (``Draw.scan_class``),
    so that the cases of a shape compile the scan once. Packed documents if ``packed`` allows;
    a quarter of the packed shapes have one-token documents, and so class L1su."""
    if packed and d.random() < 0.3:
        within = length_class(1) if d.random() < 0.25 else d.scan_class(cap)
        docs = d.class_documents(within, cap)
        return spec | {"B": 1, "T": docs[-1], "docs": docs}
    return spec | {"B": d.batch(3), "T": d.length(cap, d.scan_class(cap))}


def _precision(d: Draw) -> str:
    return "fp32" if d.tiny or d.random() < 0.5 else "bf16"


def _inputs(spec: dict, device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.randn(spec["B"], spec["T"], spec["d_model"], dtype=torch.float64)
    docs = spec.get("docs")
    cu = None if docs is None else torch.tensor(docs, dtype=torch.int32, device=device)
    return x.to(device), cu


# ---- MoM ----


def _draw_mom(d: Draw) -> dict:
    E = d.randint(1, 3 if d.tiny else 6)
    K = d.head_dim()
    expand_v = d.choice([e for e in (0.5, 1, 2) if float(K * e).is_integer() and 1 <= K * e <= 256])
    spec = {"dtype": _precision(d), "d_model": d.choice((8, 16, 32) if d.tiny else (16, 64, 128, 256))}
    spec |= {"num_heads": d.randint(1, 2 if d.tiny else 4), "head_dim": K, "expand_v": expand_v}
    topk = d.randint(1, E)
    spec |= {"num_memories": E, "topk": topk, "shared_mem": d.random() < 0.6}
    # a memory no token picks exists only when a token picks fewer than all of them
    spec |= {"conv_size": d.randint(1, 4), "empty_memory": E > 1 and d.random() < 0.2 and topk < E}
    return _lengths(d, spec, 300)


def _check_mom(spec: dict, device: str) -> list[Measure]:
    knobs = {k: spec[k] for k in ("num_heads", "head_dim", "expand_v", "num_memories", "topk", "shared_mem")}
    layer = MoMAttention(spec["d_model"], conv_size=spec["conv_size"], **knobs).to(device)
    x, cu = _inputs(spec, device)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        if spec["empty_memory"]:  # with x >= 0 the last memory's logit is always the lowest
            layer.router.weight.abs_()[-1] = -1.0
            x = x.abs()
    paths = _paths(layer, x, spec["dtype"], cu_seqlens=cu)
    fast, twin = paths["fast"], paths["twin"]
    measures = [Measure("fast", "same routing as twin", 0.0 if _routes_alike(fast, twin) else 1.0, 0.0)]
    if spec["empty_memory"]:
        load = fast["stats"]["router_load"][-1].item()
        measures.append(Measure("fast", "load of the empty memory", load, 0.0))
    one_channel = spec["head_dim"] == 1
    if one_channel and spec["dtype"] == "bf16":  # gradients ill-conditioned: fp32 cases judge them
        paths = {path: {n: run[n] for n in ("out", "stats")} for path, run in paths.items()}
        fast, twin = paths["fast"], paths["twin"]
    if _routes_alike(paths["ref"], twin):
        return measures + _as_accurate(spec, paths, TWIN_TOL_ONE_CHANNEL if one_channel else TWIN_TOL)
    for name, t in twin.items():
        if name != "stats":
            decay = spec["dtype"] == "bf16" and name in MOM_DECAY_GRADS
            limit = MOM_DECAY_TOL_BF16 if decay else MOM_TOL[spec["dtype"]]
            measures.append(Measure("fast~twin", name, rel_err(fast[name], t, FLOOR), limit))
    return measures


def _routes_alike(a: dict, b: dict) -> bool:
    """Whether two runs of a MoM layer sent every token to the same memories (equal loads)."""
    return all(torch.equal(a["stats"][n].float(), b["stats"][n].float()) for n in b["stats"])


MOM = Family("mom", _draw_mom, _check_mom)


# ---- Mamba ----


def _draw_mamba(d: Draw) -> dict:
    spec = {"dtype": _precision(d), "d_model": d.choice((4, 8, 16) if d.tiny else (8, 16, 64, 128))}
    spec |= {"d_state": d.choice(STATE_SIZES[:8] if d.tiny else STATE_SIZES)}
    spec |= {"d_conv": d.randint(1, MAX_CONV_WIDTH), "expand": d.choice((1, 2))}
    return _scanned_lengths(d, spec, 300)


def _check_mamba(spec: dict, device: str) -> list[Measure]:
    knobs = {k: spec[k] for k in ("d_state", "d_conv", "expand")}
    layer = Mamba(spec["d_model"], **knobs).to(device)
    x, cu = _inputs(spec, device)
    return _as_accurate(spec, _paths(layer, x, spec["dtype"], cu_seqlens=cu))


MAMBA = Family("mamba", _draw_mamba, _check_mamba)


# ---- MemMamba ----


MEMMAMBA_KNOBS = ("chunk_size", "pool_size", "recent_slots", "summary_dim", "num_heads", "head_dim")
MEMMAMBA_KNOBS += ("fusion", "note_scorer")


def _draw_memmamba(d: Draw) -> dict:
    spec = {"dtype": _precision(d), "d_model": d.choice((8, 16) if d.tiny else (16, 64, 128))}
    spec |= {
        "chunk_size": d.choice((1, 4, 8, 32)),
        "pool_size": d.randint(1, 8),
        "recent_slots": d.randint(0, 2),
    }
    spec |= {
        "summary_dim": d.choice((4, 8, 32)),
        "num_heads": d.randint(1, 4),
        "head_dim": d.choice((1, 8, 32)),
    }
    spec |= {"d_state": d.choice((1, 4, 16)), "fusion": d.choice(("gated", "weighted", "residual"))}
    spec["lm"] = (
        {"n_layers": d.randint(2, 4), "cross_layer_period": d.randint(0, 2)} if d.random() < 0.4 else None
    )
    # Learned note scores: near-tied priorities may rank notes differently in bf16 once
    # layers' inputs differ, a jump rather than an error; a bf16 stack scores by position.
    learned = spec["lm"] is None or spec["dtype"] == "fp32"
    spec["note_scorer"] = d.choice(("learned", "positional")) if learned else "positional"
    return _scanned_lengths(d, spec, 300, packed=spec["lm"] is None)  # a stack takes no documents


def _check_memmamba(spec: dict, device: str) -> list[Measure]:
    knobs = {k: spec[k] for k in MEMMAMBA_KNOBS} | {"backbone": {"d_state": spec["d_state"]}}
    if spec["lm"] is None:
        model = MemMamba(spec["d_model"], 0, **knobs)
        x, cu = _inputs(spec, device)
        kwargs = {"cu_seqlens": cu}
    else:
        period = spec["lm"]["cross_layer_period"]

        def mixer(**kwargs: object) -> MemMamba:
            return MemMamba(**kwargs, **knobs, cross_layer_period=period)

        model = LanguageModel(64, spec["d_model"], spec["lm"]["n_layers"], mixer)
        x, kwargs = torch.randint(64, (spec["B"], spec["T"]), device=device), {}
    with torch.no_grad():  # fusion gains at random: at their initial 0 only the backbone is tested
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("gamma_tok", "gamma_lay"):
                p.normal_()
    return _as_accurate(spec, _paths(model.to(device), x, spec["dtype"], **kwargs))


MEMMAMBA = Family("memmamba", _draw_memmamba, _check_memmamba)

LAYER_FAMILIES = {f.name: f for f in (MOM, MAMBA, MEMMAMBA)}
