"""MoM's decoding step (``MoMAttention.step``: one op for the memories, their convs and gates)
against the layer's chunked form continued from the same cache, token after token: outputs and
every cache tensor. On the PyTorch twin here, and on the Triton kernels under the interpreter
(the tests marked ``interpreted``, started by ``test_step_under_interpreter``)."""

from __future__ import annotations

import pytest
import torch

from memlab.models.layers import MoMAttention
from tests.interpreter import interpreted, run_under_interpreter

D = 24
CONFIGS = [  # (heads, head_dim, expand_v, num_memories, topk, shared_mem, conv_size)
    (2, 8, 1, 3, 2, True, 4),
    (1, 5, 2, 1, 1, False, 1),  # Gated DeltaNet, no conv taps before the token
    (1, 16, 0.5, 4, 1, False, 2),
]


def _decode_both_ways(config: tuple, backend: str, steps: int = 4) -> None:
    H, K, expand_v, E, topk, shared_mem, W = config
    layer = MoMAttention(D, num_heads=H, head_dim=K, expand_v=expand_v, num_memories=E, topk=topk,
                         shared_mem=shared_mem, conv_size=W, backend="torch")  # fmt: skip
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    B = 3
    prompt, tokens = torch.randn(B, 5, D), torch.randn(B, steps, D)
    caches = []
    for _ in range(2):
        cache = layer.init_state(B, torch.device("cpu"), torch.float32)
        with torch.no_grad():
            layer(prompt, state=cache)
        caches.append(cache)
    stepped, chunked = caches
    layer.backend = backend
    for t in range(steps):
        x = tokens[:, t : t + 1]
        with torch.no_grad():
            got = layer(x, state=stepped).hidden  # decoding: the step
        layer.backend = "torch"
        with torch.enable_grad():  # grad mode takes the chunked form, at T = 1
            want = layer(x, state=chunked).hidden.detach()
        layer.backend = backend
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for name in ("memory", "q_tail", "k_tail", "v_tail"):
            torch.testing.assert_close(getattr(stepped, name), getattr(chunked, name).detach(), msg=name)


@pytest.mark.parametrize("config", CONFIGS)
def test_step_equals_the_chunked_form(config: tuple) -> None:
    torch.manual_seed(0)
    _decode_both_ways(config, "torch")


def test_step_under_interpreter() -> None:
    run_under_interpreter(__file__)


@interpreted
@pytest.mark.parametrize("config", CONFIGS)
def test_triton_step_equals_the_chunked_form(config: tuple) -> None:
    torch.manual_seed(1)
    _decode_both_ways(config, "triton")
