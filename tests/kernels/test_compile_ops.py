"""The Triton ops under torch.compile. Their Triton paths are torch.library custom ops
(``kernels/<op>/library.py``): torch's ``opcheck`` holds each to its schema (the decoding ops'
in-place cache updates included), its fake kernel and its registered backward; a GDN or MoM
block on the Triton backend compiles to one graph, with no break, giving the eager loss and
gradients, and so do the decoding steps of GDN, MoM and Mamba blocks, giving eager's logits.

Run under Triton's interpreter by ``test_triton_kernels_under_interpreter`` (see
tests/interpreter.py); "aot_eager" traces forward and backward as inductor would, without
generating code.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from memlab.models import LanguageModel
from memlab.models.captured_step import cache_leaves
from tests.interpreter import interpreted, run_under_interpreter
from tests.models.mixers import MIXERS

pytest.importorskip("triton")


def _leaf(*shape: int, dtype: torch.dtype = torch.float32, unit: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, dtype=dtype)
    return (F.normalize(t, dim=-1) if unit else t).requires_grad_()


def _conv_case() -> tuple:
    from memlab.kernels.causal_conv1d.library import causal_conv1d_op

    x, weight, bias = _leaf(2, 37, 8), _leaf(8, 4), _leaf(8)
    start = torch.tensor([0] * 20 + [20] * 17, dtype=torch.int32)  # two documents in each row
    return causal_conv1d_op, (x, weight, bias, start, True)


def _conv_plain_case() -> tuple:
    from memlab.kernels.causal_conv1d.library import causal_conv1d_op

    return causal_conv1d_op, (_leaf(1, 5, 3), _leaf(3, 2), None, None, False)


def _gated_rmsnorm_case() -> tuple:
    from memlab.kernels.gated_rmsnorm.library import gated_rmsnorm_op

    return gated_rmsnorm_op, (_leaf(9, 16), _leaf(9, 16), _leaf(16), 1e-5)


def _l2norm_case(D: int) -> tuple:
    from memlab.kernels.l2norm.library import l2norm_op

    return l2norm_op, (_leaf(7, D), 1e-6)  # D >= 16 saves the output, D < 16 the input


def _combine_case() -> tuple:
    from memlab.kernels.combine_routed.library import combine_routed_op

    values, weights = _leaf(8, 8), _leaf(3, 2)
    index = torch.tensor([[0, 5], [3, 1], [6, 2]])  # distinct; rows 4 and 7 get no gradient
    return combine_routed_op, (values, index, weights)


def _gdn_case(with_state: bool, packed: bool) -> tuple:
    from memlab.kernels.gated_delta_rule.library import chunk_gated_delta_rule_op

    B, T, H, K, V = (1, 70, 2, 16, 16) if packed else (2, 37, 2, 16, 16)
    cu_seqlens = torch.tensor([0, 3, 3, 70]) if packed else None
    N = 3 if packed else B
    q, k, v = _leaf(B * T, H, K, unit=True), _leaf(B * T, H, K, unit=True), _leaf(B * T, H, V)
    g = F.logsigmoid(torch.randn(B * T, H)).requires_grad_()
    beta = torch.rand(B * T, H).requires_grad_()
    h0 = _leaf(N, H, K, V) if with_state else None
    return chunk_gated_delta_rule_op, (q, k, v, g, beta, h0, cu_seqlens, B, T, K**-0.5, with_state)


def _topk_route_case() -> tuple:
    from memlab.kernels.topk_route.library import topk_route_op

    return topk_route_op, (torch.randn(5, 8), torch.randn(4, 8), 2, True)


def _conv_update_case() -> tuple:
    from memlab.kernels.causal_conv1d.library import causal_conv1d_update_op

    return causal_conv1d_update_op, (
        torch.randn(2, 8),
        torch.randn(2, 8, 3),
        torch.randn(8, 4),
        torch.randn(8),
        True,
    )


def _state_update_case(low_rank: bool) -> tuple:
    from memlab.kernels.selective_scan.library import selective_state_update_op

    batch, dim, N, R = 2, 8, 4, 3
    dt = torch.randn(batch, R if low_rank else dim)
    A, A_log = (None, torch.randn(dim, N)) if low_rank else (-torch.rand(dim, N), None)
    dt_proj = torch.randn(dim, R) if low_rank else None
    x, z, B, C = (
        torch.randn(batch, dim),
        torch.randn(batch, dim),
        torch.randn(batch, N),
        torch.randn(batch, N),
    )
    args = (
        torch.randn(batch, dim, N),
        x,
        dt,
        A,
        B,
        C,
        torch.randn(dim),
        z,
        torch.randn(dim),
        True,
        dt_proj,
        A_log,
    )
    return selective_state_update_op, args


def _gdn_step_case(routed: bool) -> tuple:
    from memlab.kernels.gated_delta_rule.library import gated_delta_rule_step_op

    B, M, H, K, V, W = 2, 3, 2, 16, 16, 4
    q, k, v = torch.randn(B, H * K), torch.randn(B, M, H * K), torch.randn(B, M, H * V)
    a, b = torch.randn(B, M, H), torch.randn(B, M, H)
    weights = torch.rand(B, M) if routed else None
    visited = torch.tensor([[True, False, True], [False, True, True]]) if routed else None
    state = torch.randn(B, M, H, K, V)
    tails = torch.randn(B, H * K, W - 1), torch.randn(B, M, H * K, W - 1), torch.randn(B, M, H * V, W - 1)
    convs = torch.randn(H * K, W), torch.randn(H * K, W), torch.randn(H * V, W)
    args = (q, k, v, a, b, weights, visited, state, *tails, *convs, torch.randn(H), torch.randn(H), K**-0.5)
    return gated_delta_rule_step_op, args


CASES = {
    "causal_conv1d": _conv_case,
    "causal_conv1d_plain": _conv_plain_case,
    "gated_rmsnorm": _gated_rmsnorm_case,
    "l2norm_from_output": lambda: _l2norm_case(16),
    "l2norm_from_input": lambda: _l2norm_case(5),
    "combine_routed": _combine_case,
    "chunk_gated_delta_rule": lambda: _gdn_case(with_state=False, packed=False),
    "chunk_gated_delta_rule_state": lambda: _gdn_case(with_state=True, packed=False),
    "chunk_gated_delta_rule_packed": lambda: _gdn_case(with_state=True, packed=True),
    # decoding: forward only, the caches updated in place
    "topk_route": _topk_route_case,
    "causal_conv1d_update": _conv_update_case,
    "selective_state_update": lambda: _state_update_case(low_rank=False),
    "selective_state_update_low_rank": lambda: _state_update_case(low_rank=True),
    "gated_delta_rule_step": lambda: _gdn_step_case(routed=True),
    "gated_delta_rule_step_every_memory": lambda: _gdn_step_case(routed=False),
}


def test_triton_kernels_under_interpreter() -> None:
    run_under_interpreter(__file__, workers=2)


@interpreted
@pytest.mark.parametrize("name", list(CASES))
def test_custom_op_passes_opcheck(name: str) -> None:
    torch.manual_seed(0)
    op, args = CASES[name]()
    torch.library.opcheck(op, args)


def _loss_and_grads(block: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = block(x)
    loss = out.hidden.square().mean() + sum(out.aux_losses.values(), torch.zeros(()))
    grads = torch.autograd.grad(loss, [x, *block.parameters()])
    return [loss.detach(), *grads]


@interpreted
@pytest.mark.parametrize("name", ["gdn", "mom"])
def test_block_compiles_to_one_graph_with_the_eager_results(name: str) -> None:
    torch.manual_seed(0)
    model = LanguageModel(64, 32, 2, MIXERS[name])
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = "triton"
    block, x = model.layers[0], torch.randn(2, 33, 32, requires_grad=True)
    want = _loss_and_grads(block, x)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # a graph break fails
    got = _loss_and_grads(compiled, x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@interpreted
@pytest.mark.parametrize("name", ["gdn", "mom", "mamba", "memmamba"])
def test_decoding_step_compiles_to_one_graph_with_the_eager_tokens(name: str) -> None:
    """A block's decoding step (one token against the caches, updated in place) compiles with
    no break and gives eager's logits and caches."""
    torch.manual_seed(0)
    model = LanguageModel(64, 32, 2, MIXERS[name]).eval()
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = "triton"
    ids = torch.randint(64, (2, 12))
    with torch.no_grad():
        states = model.init_states(2, torch.device("cpu"), torch.float32)
        model(ids[:, :8], states=states)  # prefill, eagerly
        copies = copy.deepcopy(states)
        want = [model(ids[:, t : t + 1], states=states).logits for t in range(8, 12)]
        torch._dynamo.reset()
        model.compile_blocks(backend="aot_eager", fullgraph=True)  # a graph break fails
        got = [model(ids[:, t : t + 1], states=copies).logits for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=1e-5, atol=1e-6)
    for (_, a), (_, b) in zip(cache_leaves(copies), cache_leaves(states), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
