"""gated_delta_rule_step's refusals: a shape, dtype or size it cannot take is one
KernelInputError naming the argument, before any work (its values are checked by the
conformance suite, family ``gdn_step``)."""

from __future__ import annotations

import pytest
import torch

from memlab.kernels import KernelInputError
from memlab.kernels.gated_delta_rule.step import gated_delta_rule_step


def _inputs(B=2, M=3, H=2, K=4, V=6, W=3) -> dict:
    z = torch.zeros
    return {
        "q": z(B, H * K), "k": z(B, M, H * K), "v": z(B, M, H * V), "a": z(B, M, H), "b": z(B, M, H),
        "weights": z(B, M), "visited": torch.ones(B, M, dtype=torch.bool), "state": z(B, M, H, K, V),
        "q_tail": z(B, H * K, W - 1),
        "k_tail": z(B, M, H * K, W - 1), "v_tail": z(B, M, H * V, W - 1), "q_conv": z(H * K, W),
        "k_conv": z(H * K, W), "v_conv": z(H * V, W), "A_log": z(H), "dt_bias": z(H),
    }  # fmt: skip


def test_zero_inputs_leave_a_zero_state() -> None:
    x = _inputs()
    o = gated_delta_rule_step(**x, backend="torch")
    assert o.shape == (2, 2, 6) and not o.any() and not x["state"].any()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"k": torch.zeros(2, 3, 9)}, "k must have shape [2, 3, 8]"),
        ({"state": torch.zeros(2, 3, 2, 4)}, "state must be [B, M, H, K, V]"),
        ({"q_tail": torch.zeros(2, 8, 2, dtype=torch.float16)}, "q_tail must be in q's dtype"),
        ({"state": torch.zeros(2, 3, 2, 4, 6, dtype=torch.bfloat16)}, "state must be fp32"),
        ({"weights": torch.zeros(2, 3, dtype=torch.long)}, "weights must be a float tensor"),
        ({"visited": torch.ones(2, 3)}, "visited must be a bool tensor"),
        ({"v": torch.zeros(2, 3, 12, dtype=torch.float16)}, "v must be in q's dtype"),
        ({"k_tail": torch.zeros(2, 3, 2, 8).transpose(2, 3)}, "k_tail must be contiguous"),
        ({"q": torch.zeros(2, 8, requires_grad=True)}, "a decoding step has no backward, but q require grad"),
        ({"A_log": [0.0, 0.0]}, "A_log must be a torch.Tensor, got list"),
    ],
)
def test_bad_inputs_are_one_clear_error(change: dict, needle: str) -> None:
    with pytest.raises(KernelInputError, match=None) as info:
        gated_delta_rule_step(**(_inputs() | change), backend="torch")
    assert needle in str(info.value) and str(info.value).startswith("gated_delta_rule_step: ")


def test_sizes_beyond_the_limits_are_refused() -> None:
    with pytest.raises(KernelInputError, match="K=257"):
        gated_delta_rule_step(**_inputs(K=257, H=1, M=1, B=1), backend="torch")
    with pytest.raises(KernelInputError, match="W=17"):
        gated_delta_rule_step(**_inputs(W=17), backend="torch")


def test_no_weights_means_every_memory_at_weight_one() -> None:
    torch.manual_seed(0)
    x = {n: torch.randn(t.shape) if t.is_floating_point() else t for n, t in _inputs().items()}
    implicit = {n: t.clone() for n, t in x.items()} | {"weights": None, "visited": None}
    explicit = {n: t.clone() for n, t in x.items()} | {"weights": torch.ones(2, 3)}
    o = gated_delta_rule_step(**implicit, backend="torch")
    torch.testing.assert_close(o, gated_delta_rule_step(**explicit, backend="torch"))
    for name in ("state", "q_tail", "k_tail", "v_tail"):
        torch.testing.assert_close(implicit[name], explicit[name])


def test_weights_and_visited_come_together() -> None:
    with pytest.raises(KernelInputError, match="weights and visited must be given together"):
        gated_delta_rule_step(**(_inputs() | {"weights": None}), backend="torch")
