"""The Triton ops under torch.compile. Their Triton paths are torch.library custom ops
(``kernels/<op>/library.py``): torch's ``opcheck`` holds each to its schema, its fake kernel and
its registered backward, and a GDN or MoM block on the Triton backend compiles to one graph,
with no break, giving the eager loss and gradients.

Run under Triton's interpreter by ``test_triton_kernels_under_interpreter`` (see
tests/interpreter.py); "aot_eager" traces forward and backward as inductor would, without
generating code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.models import LanguageModel
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
