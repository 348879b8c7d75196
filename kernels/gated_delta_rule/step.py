"""One decoding step of M gated-delta-rule memories, their short convolutions and gates
included, mixed by per-memory weights: the whole recurrent core of a MoM (or, with M = 1, a
Gated DeltaNet) layer for one token.

For each sequence b, memory m the token visits, and head h:
    q̃ = l2norm(silu(conv(q_tail, q))),  k̃ = l2norm(silu(conv(k_tail, k))),  ṽ = silu(conv(v_tail, v))
    β = sigmoid(b),  g = −exp(A_log) · softplus(a + dt_bias)
    S ← e^g (I − β k̃ k̃ᵀ) S + β k̃ ṽᵀ,   o += w_bm · scale · Sᵀ q̃
A memory the token does not visit keeps its state and its conv tails as they are (a visited
memory's weight may still be 0: a router probability that underflows). The q conv is shared
by the memories and always advances.

Two launches for all of it (the chunked form's ops would be some forty small ones per layer:
routing layout, three convs, gates, norms, the recurrence, the combine), so that a CUDA-graph
replay of a whole model is bound by memory traffic rather than by launch latency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import HAS_TRITON, KernelInputError, opaque, refuse_grad, resolve_fp32_backend
from memlab.kernels.l2norm.torch_l2norm import EPS
from memlab.kernels.limits import MAX_CONV_WIDTH, MAX_HEAD_DIM, check_size
from memlab.kernels.precision import compute_dtype

OP = "gated_delta_rule_step"


def _conv_step(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu of the depthwise conv of x [..., C] after tail [..., C, W−1] (weight [C, W], tap W−1
    on x), in the compute dtype, and the new tail [..., C, W−1] in tail's dtype."""
    window = torch.cat([tail, x[..., None]], dim=-1)
    wide = compute_dtype(window)
    y = F.silu((window.to(wide) * weight.to(wide)).sum(-1))
    return y, window[..., 1:]


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + EPS)


def gated_delta_rule_step_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    weights: torch.Tensor | None,
    visited: torch.Tensor | None,
    state: torch.Tensor,
    q_tail: torch.Tensor,
    k_tail: torch.Tensor,
    v_tail: torch.Tensor,
    q_conv: torch.Tensor,
    k_conv: torch.Tensor,
    v_conv: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """PyTorch twin (and, in fp64, the reference); arguments as ``gated_delta_rule_step``."""
    B, M, H, K, V = state.shape
    wide = state.dtype
    if visited is None:  # every memory visited at weight 1
        weights = state.new_ones(B, M)
        visited = torch.ones(B, M, dtype=torch.bool, device=state.device)
    qc, q_new = _conv_step(q, q_tail, q_conv)
    kc, k_new = _conv_step(k, k_tail, k_conv)
    vc, v_new = _conv_step(v, v_tail, v_conv)
    q_hat = _l2norm(qc.to(wide).view(B, 1, H, K)) * scale
    k_hat = _l2norm(kc.to(wide).view(B, M, H, K))
    v_hat = vc.to(wide).view(B, M, H, V)
    beta = torch.sigmoid(b.to(wide))
    g = -A_log.to(wide).exp() * F.softplus(a.to(wide) + dt_bias.to(wide))
    # padding semantics: an unvisited memory neither decays nor writes
    decay = torch.where(visited[..., None], g.exp(), 1.0)[..., None, None]
    beta = torch.where(visited[..., None], beta, 0.0)
    S = decay * state
    residual = v_hat - (S * k_hat[..., None]).sum(-2)
    S = S + k_hat[..., None] * (beta[..., None] * residual)[..., None, :]
    o = ((S * q_hat[..., None]).sum(-2) * (weights.to(wide) * visited)[..., None, None]).sum(1)
    state.copy_(S)
    q_tail.copy_(q_new)
    mask = visited[..., None, None]
    k_tail.copy_(torch.where(mask, k_new, k_tail))
    v_tail.copy_(torch.where(mask, v_new, v_tail))
    return o.to(q.dtype)


def gated_delta_rule_step_triton(**named) -> torch.Tensor:
    """The Triton kernels, imported on first use; under torch.compile the custom op of
    library.py, one node of the compiled graph rather than a graph break."""
    from memlab.kernels.gated_delta_rule.library import gated_delta_rule_step_op
    from memlab.kernels.gated_delta_rule.triton_step import gated_delta_rule_step_triton

    if torch.compiler.is_compiling():
        return gated_delta_rule_step_op(**named)
    return gated_delta_rule_step_triton(**named)


# the twin stays a graph break under torch.compile, as it always was
_IMPLEMENTATIONS = {"torch": opaque(gated_delta_rule_step_torch)}
if HAS_TRITON:
    _IMPLEMENTATIONS["triton"] = gated_delta_rule_step_triton


def _check(named: dict[str, torch.Tensor]) -> None:
    """Shapes, dtypes, devices and layouts only (never a host sync)."""
    if (named["weights"] is None) != (named["visited"] is None):
        raise KernelInputError(f"{OP}: weights and visited must be given together (or both None)")
    if named["weights"] is None:
        named = {n: x for n, x in named.items() if n not in ("weights", "visited")}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise KernelInputError(f"{OP}: {name} must be a torch.Tensor, got {type(x).__name__}")
    state, q = named["state"], named["q"]
    if state.dim() != 5:
        raise KernelInputError(f"{OP}: state must be [B, M, H, K, V], got shape {tuple(state.shape)}")
    B, M, H, K, V = state.shape
    check_size(OP, "K", K, MAX_HEAD_DIM, "key dim")
    check_size(OP, "V", V, MAX_HEAD_DIM, "value dim")
    W = named["q_conv"].shape[-1]
    check_size(OP, "W", W, MAX_CONV_WIDTH, "conv width")
    expected = {
        "q": (B, H * K), "k": (B, M, H * K), "v": (B, M, H * V), "a": (B, M, H), "b": (B, M, H),
        "weights": (B, M), "visited": (B, M), "q_tail": (B, H * K, W - 1), "k_tail": (B, M, H * K, W - 1),
        "v_tail": (B, M, H * V, W - 1), "q_conv": (H * K, W), "k_conv": (H * K, W),
        "v_conv": (H * V, W), "A_log": (H,), "dt_bias": (H,),
    }  # fmt: skip
    for name, shape in expected.items():
        x = named.get(name)
        if x is None:
            continue
        if tuple(x.shape) != shape:
            raise KernelInputError(
                f"{OP}: {name} must have shape {list(shape)} for state {list(state.shape)}, "
                f"got {list(x.shape)}"
            )
        if x.device != state.device:
            raise KernelInputError(f"{OP}: {name} is on {x.device} but state is on {state.device}")
        if name != "visited" and not x.is_floating_point():
            raise KernelInputError(f"{OP}: {name} must be a float tensor, got {x.dtype}")
    if "visited" in named and named["visited"].dtype != torch.bool:
        raise KernelInputError(f"{OP}: visited must be a bool tensor, got {named['visited'].dtype}")
    for name in ("k", "v", "q_tail", "k_tail", "v_tail"):
        if named[name].dtype != q.dtype:
            raise KernelInputError(f"{OP}: {name} must be in q's dtype {q.dtype}, got {named[name].dtype}")
    if state.dtype not in (torch.float32, torch.float64):
        raise KernelInputError(f"{OP}: state must be fp32 (or fp64), got {state.dtype}")
    for name in ("state", "q_tail", "k_tail", "v_tail"):
        if not named[name].is_contiguous():
            raise KernelInputError(f"{OP}: {name} must be contiguous (it is updated in place)")
    refuse_grad(OP, named)


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    weights: torch.Tensor | None,
    visited: torch.Tensor | None,
    state: torch.Tensor,
    q_tail: torch.Tensor,
    k_tail: torch.Tensor,
    v_tail: torch.Tensor,
    q_conv: torch.Tensor,
    k_conv: torch.Tensor,
    v_conv: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One token through M gated-delta-rule memories (see the module docstring); forward only.

    Args:
        q: [B, H·K] the query before its conv; k: [B, M, H·K] and v: [B, M, H·V] each memory's
            key and value before their convs; any strides with a unit last one.
        a, b: [B, M, H] the decay and β pre-activations.
        weights: [B, M] each memory's mixing weight.
        visited: bool [B, M] whether the token visits the memory (reads, decays and writes it).
            weights and visited both None: every memory is visited at weight 1 (a Gated
            DeltaNet layer), with no tensors to fill per step.
        state: [B, M, H, K, V] fp32 (fp64 on the twin), updated in place.
        q_tail [B, H·K, W−1], k_tail [B, M, H·K, W−1], v_tail [B, M, H·V, W−1]: the last W−1
            conv inputs, in q's dtype, updated in place.
        q_conv [H·K, W], k_conv [H·K, W], v_conv [H·V, W]: depthwise conv weights, tap W−1 on
            the current token.
        A_log, dt_bias: [H] decay parameters.
        scale: of the read-out; default K ** -0.5.
        backend: "auto" | "triton" | "torch" (see memlab.kernels.backend).

    Returns:
        o [B, H, V] in q's dtype: Σ_m w_bm · o_bm over the visited memories.

    Raises:
        KernelInputError: for inputs it cannot take, or an input that requires grad while grad
            is enabled (a decoding step has no backward).
    """
    named = {
        "q": q, "k": k, "v": v, "a": a, "b": b, "weights": weights, "visited": visited, "state": state,
        "q_tail": q_tail,
        "k_tail": k_tail, "v_tail": v_tail, "q_conv": q_conv, "k_conv": k_conv, "v_conv": v_conv,
        "A_log": A_log, "dt_bias": dt_bias,
    }  # fmt: skip
    _check(named)
    K = state.shape[3]
    scale = K**-0.5 if scale is None else float(scale)
    implementation = _IMPLEMENTATIONS[resolve_fp32_backend(backend, q, OP, (q, state))]
    return implementation(**named, scale=scale)
