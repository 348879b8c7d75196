"""Every op refuses sizes beyond its documented maximum (memlab.kernels.limits) in one line
naming the size and the limit, before any kernel runs, on either backend."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels import (
    KernelInputError,
    causal_conv1d,
    chunk_gated_delta_rule,
    combine_routed,
    fused_recurrent_gated_delta_rule,
    gated_rmsnorm,
    l2norm,
    limits,
    selective_scan,
    selective_state_update,
)


def _gdn(op, K: int, V: int):
    q = torch.randn(1, 3, 1, K)
    return lambda: op(
        q, q, torch.randn(1, 3, 1, V), torch.zeros(1, 3, 1), torch.ones(1, 3, 1), backend="torch"
    )


def _scan(N: int):
    u = torch.randn(1, 2, 3)
    return lambda: selective_scan(u, u, -torch.ones(2, N), torch.randn(1, N, 3), torch.randn(1, N, 3))


def _state_update(N: int):
    x = torch.randn(1, 2)
    B = torch.randn(1, N)
    return lambda: selective_state_update(torch.zeros(1, 2, N), x, x, -torch.ones(2, N), B, B)


CASES = {
    "chunk K": (_gdn(chunk_gated_delta_rule, 257, 4), "K=257 (head dim of q and k)", limits.MAX_HEAD_DIM),
    "chunk V": (_gdn(chunk_gated_delta_rule, 4, 300), "V=300 (head dim of v)", limits.MAX_HEAD_DIM),
    "recurrent K": (_gdn(fused_recurrent_gated_delta_rule, 512, 4), "K=512 (head dim of q and k)", 256),
    "scan N": (_scan(257), "N=257 (A's state size)", limits.MAX_STATE_SIZE),
    "state update N": (_state_update(300), "N=300 (the state's size)", limits.MAX_STATE_SIZE),
    "conv W": (
        lambda: causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 17)),
        "W=17 (weight's width)",
        limits.MAX_CONV_WIDTH,
    ),
    "l2norm D": (lambda: l2norm(torch.randn(2, 8193)), "D=8193 (x's last dim)", limits.MAX_NORM_DIM),
    "rmsnorm D": (
        lambda: gated_rmsnorm(torch.randn(2, 9000), torch.randn(2, 9000), torch.ones(9000)),
        "D=9000 (o's last dim)",
        limits.MAX_NORM_DIM,
    ),
    "combine S": (
        lambda: combine_routed(torch.randn(130, 4), torch.arange(130).view(2, 65), torch.rand(2, 65)),
        "S=65 (slots per output row)",
        limits.MAX_COMBINE_SLOTS,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_beyond_the_limit_is_one_line_naming_it(case: str) -> None:
    call, what, limit = CASES[case]
    with pytest.raises(KernelInputError) as error:
        call()
    message = str(error.value)
    assert what in message and f"supported: 1 to {limit}" in message and "\n" not in message
