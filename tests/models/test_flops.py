"""Training FLOPs per token: 6 per active parameter, the input embedding a lookup."""

from __future__ import annotations

import functools

from torch import nn

from memlab.models import LanguageModel
from memlab.models.flops import active_parameters, training_flops_per_token
from memlab.models.layers import Attention, MoMAttention
from memlab.utils.gpu_peak import peak_bf16_flops


def _model(tied: bool) -> LanguageModel:
    return LanguageModel(50, 16, 2, functools.partial(Attention, num_heads=2), tie_embeddings=tied)


def test_embedding_is_counted_once_as_the_head_when_tied() -> None:
    tied, untied = _model(True), _model(False)
    total = sum(p.numel() for p in untied.parameters())
    assert active_parameters(untied) == total - 50 * 16
    assert active_parameters(tied) == sum(p.numel() for p in tied.parameters()) == total - 50 * 16
    assert training_flops_per_token(tied) == 6 * active_parameters(tied)


def test_mixers_report_their_idle_parameters() -> None:
    class Idle(nn.Module):
        def idle_parameters(self) -> int:
            return 7

    model = _model(True)
    model.layers[0].add_module("extra", Idle())
    assert active_parameters(model) == active_parameters(_model(True)) - 7


def test_a_mom_token_passes_through_its_topk_memories_only() -> None:
    mom = LanguageModel(
        50, 16, 1, functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=4, topk=1)
    )
    per_memory = mom.layers[0].mixer.memory_proj[0].numel()
    assert active_parameters(mom) == sum(p.numel() for p in mom.parameters()) - 3 * per_memory


def test_peak_throughput_by_device_name() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA GH200 480GB") == 989e12
    assert peak_bf16_flops("Tesla T4") is None
