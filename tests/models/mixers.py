"""Every token mixer under test, as a small factory: the contract tests run over all of them."""

import functools

from memlab.models.layers import Attention, Mamba, MoMAttention

MIXERS = {
    "attention": functools.partial(Attention, num_heads=2),
    "mom": functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2),
    "mom_noshared": functools.partial(
        MoMAttention, num_heads=2, head_dim=8, num_memories=3, topk=2, shared_mem=False
    ),
    "gdn": functools.partial(MoMAttention, num_heads=2, head_dim=8, num_memories=1, topk=1, shared_mem=False),
    "mamba": functools.partial(Mamba, d_state=4, expand=2),
}
