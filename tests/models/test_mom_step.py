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


def test_a_memory_routed_at_weight_zero_is_still_written() -> None:
    # A router logit gap above ~104 underflows the softmax to 0 for a top-k memory: the chunked
    # form still visits it (decays and writes its state), and so must the step.
    torch.manual_seed(2)
    layer = MoMAttention(D, num_heads=1, head_dim=8, num_memories=3, topk=2, conv_size=2, backend="torch")
    with torch.no_grad():
        layer.router.weight.mul_(300)
    x = 3 * torch.randn(2, 3, D)
    stepped, chunked = (layer.init_state(2, torch.device("cpu"), torch.float32) for _ in range(2))
    for t in range(3):
        with torch.no_grad():
            got = layer(x[:, t : t + 1], state=stepped).hidden
        with torch.enable_grad():
            want = layer(x[:, t : t + 1], state=chunked).hidden.detach()
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(stepped.memory, chunked.memory)


def test_step_continues_a_cache_left_as_views() -> None:
    # One token through the chunked form (grad on) leaves the conv tails as views; the step
    # then continues them (the Triton kernels need them contiguous: the step makes them so).
    layer = MoMAttention(D, num_heads=1, head_dim=8, num_memories=2, topk=1, conv_size=3, backend="torch")
    state = layer.init_state(1, torch.device("cpu"), torch.float32)
    with torch.enable_grad():
        layer(torch.randn(1, 1, D), state=state)
    with torch.no_grad():
        layer(torch.randn(1, 1, D), state=state)
    assert all(t.is_contiguous() for t in (state.memory, state.q_tail, state.k_tail, state.v_tail))


def test_step_sees_weights_changed_after_the_last_step() -> None:
    # The step joins q, gate and memory projections into one cached weight: an optimizer step
    # (in place) or a move to another dtype must rebuild it.
    torch.manual_seed(3)
    layer = MoMAttention(D, num_heads=2, head_dim=4, num_memories=3, topk=2, conv_size=2, backend="torch")
    state = layer.init_state(2, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 1, D)
    with torch.no_grad():
        layer(x, state=state)
        for p in (layer.q_proj.weight, layer.gate_proj.weight, layer.memory_proj):
            p.add_(0.1 * torch.randn_like(p))
    for dtype in (torch.float32, torch.float64):
        layer.to(dtype)
        stepped, chunked = (layer.init_state(2, torch.device("cpu"), dtype) for _ in range(2))
        with torch.no_grad():
            got = layer(x.to(dtype), state=stepped).hidden
        with torch.enable_grad():
            want = layer(x.to(dtype), state=chunked).hidden.detach()
        torch.testing.assert_close(got, want)


def test_prepare_decoding_sees_writes_that_bypass_autograd_and_keeps_the_address() -> None:
    # fused optimizers and .data writes leave the version counter alone: decoding prepares the
    # join before each generation, in place, so that a captured graph reads the new weights
    torch.manual_seed(4)
    layer = MoMAttention(D, num_heads=2, head_dim=4, num_memories=3, topk=2, conv_size=2, backend="torch")
    x = torch.randn(2, 1, D)
    with torch.no_grad():
        layer(x, state=layer.init_state(2, torch.device("cpu"), torch.float32))
        address = layer._joined_projections(torch.float32, *layer._joined_sources()).data_ptr()
        layer.q_proj.weight.data.add_(0.5)
        layer.prepare_decoding(torch.float32)
        assert layer._joined_projections(torch.float32, *layer._joined_sources()).data_ptr() == address
        got = layer(x, state=layer.init_state(2, torch.device("cpu"), torch.float32)).hidden
    with torch.enable_grad():
        want = layer(x, state=layer.init_state(2, torch.device("cpu"), torch.float32)).hidden.detach()
    torch.testing.assert_close(got, want)


def test_step_of_a_layer_made_in_inference_mode() -> None:
    with torch.inference_mode():
        layer = MoMAttention(D, num_heads=1, head_dim=4, num_memories=2, topk=1, backend="torch")
        state = layer.init_state(1, torch.device("cpu"), torch.float32)
        assert layer(torch.randn(1, 1, D), state=state).hidden.shape == (1, 1, D)
