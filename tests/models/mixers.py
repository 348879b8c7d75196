"""Every token mixer under test, as a small factory: the contract tests run over all of them."""

import functools

import torch

from memlab.models.layers import Attention, Mamba, MemMamba, MoMAttention


def memmamba(**kwargs) -> MemMamba:
    """MemMamba with small chunks and pools (T=70 fills and evicts them), cross-layer attention
    at layer 1, and random fusion gains: at their initial 0 it would only test its backbone."""
    layer = MemMamba(
        **kwargs,
        chunk_size=8,
        pool_size=3,
        summary_dim=8,
        num_heads=2,
        head_dim=8,
        cross_layer_period=2,
        backbone={"d_state": 4},
    )
    with torch.no_grad():
        for gamma in (layer.gamma_tok, layer.gamma_lay):
            if gamma is not None:
                gamma.normal_()
    return layer


MIXERS = {
    "attention": functools.partial(Attention, num_heads=2),
    "mom": functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2),
    "mom_noshared": functools.partial(
        MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2, shared_mem=False
    ),
    "gdn": functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=1, topk=1, shared_mem=False),
    "mamba": functools.partial(Mamba, d_state=4, expand=2),
    "memmamba": memmamba,
}
