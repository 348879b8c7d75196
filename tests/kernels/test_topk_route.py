"""topk_route: the PyTorch twin against the routing MoM trains with, its refusals, and the
Triton kernel against the twin under the interpreter (more shapes: the conformance family
``topk_route`` on the GPU)."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels import KernelInputError, topk_route
from memlab.models.layers.mom.routing import route
from tests.interpreter import interpreted, run_under_interpreter


def test_twin_routes_as_training_does() -> None:
    torch.manual_seed(0)
    router = torch.nn.Linear(24, 6, bias=False)
    x = torch.randn(5, 24)
    for shared in (False, True):
        want = route(x[:, None], router, 6, 2, shared, torch.float32)
        weights, visited = topk_route(x, router.weight.detach(), 2, shared, backend="torch")
        assert torch.equal(visited, want.visited[:, 0].bool())
        dense = torch.zeros_like(weights).scatter_(1, want.chosen[:, 0], want.weights[:, 0])
        torch.testing.assert_close(weights, dense)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((torch.zeros(2, 8), torch.zeros(3, 9), 1, False), "x must be [N, 9] for router [3, 9]"),
        ((torch.zeros(2, 8), torch.zeros(65, 8), 1, False), "E=65 (routed memories) is out of range"),
        ((torch.zeros(2, 8), torch.zeros(3, 8), 4, False), "topk=4 (memories per token) is out of range"),
        ((torch.zeros(2, 8, dtype=torch.long), torch.zeros(3, 8), 1, False), "x must be a 2-D floating"),
        ((torch.zeros(2, 8), torch.zeros(3, 8, requires_grad=True), 1, False), "has no backward"),
    ],
)
def test_refusals_name_the_argument(args: tuple, needle: str) -> None:
    with pytest.raises(KernelInputError) as info:
        topk_route(*args, backend="torch")
    assert needle in str(info.value) and str(info.value).startswith("topk_route: ")


def test_route_under_interpreter() -> None:
    run_under_interpreter(__file__)


CASES = [  # N, D, E, topk, shared, dtype, logit scale (300: some chosen probabilities underflow)
    (3, 16, 4, 2, True, torch.float32, 3.0),
    (1, 1, 2, 1, False, torch.float32, 3.0),
    (5, 130, 7, 7, True, torch.float16, 3.0),
    (2, 40, 64, 5, False, torch.bfloat16, 3.0),
    (4, 24, 5, 3, True, torch.float32, 300.0),
    (0, 8, 3, 1, True, torch.float32, 3.0),
]


@interpreted
@pytest.mark.parametrize(("N", "D", "E", "k", "shared", "dtype", "scale"), CASES)
def test_triton_equals_twin(N: int, D: int, E: int, k: int, shared: bool, dtype, scale: float) -> None:
    torch.manual_seed(N * 131 + D)
    x = torch.randn(N, 2 * D, dtype=dtype)[:, ::2]  # strided tokens
    router = (scale * D**-0.5 * torch.randn(E, D)).to(dtype)
    got = topk_route(x, router, k, shared, backend="triton")
    want = topk_route(x, router, k, shared, backend="torch")
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert got[1][:, :E].sum(-1).eq(k).all()  # every chosen memory visited, underflowed or not
    if scale < 100:
        assert torch.equal(got[1], want[1])
    else:  # probabilities tied at 0: either path may pick any of them, at weight 0
        assert torch.equal(got[1] & (want[0] > 0), want[0] > 0)


def test_twin_routes_in_fp32_under_autocast() -> None:
    torch.manual_seed(3)
    x, router = torch.randn(64, 40), torch.randn(8, 40)
    want = topk_route(x, router, 2, True, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = topk_route(x, router, 2, True, backend="torch")
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got, want)
