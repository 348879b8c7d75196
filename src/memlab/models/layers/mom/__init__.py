"""MoM — Mixture-of-Memories (arXiv 2502.13685): E gated-delta-rule memories per head, a top-k
router that decides which of them read and write each token, and one shared memory that sees
every token. With one memory, top-1 and no shared memory the same layer is Gated DeltaNet.

- layer.py: ``MoMAttention``, the layer's equations, written once;
- config.py: ``MoMConfig``, its options; state.py: ``MoMState``, its decoding cache;
- routing.py: the top-k router and its load-balancing loss;
- layout.py: the rule that picks the packed or padded layout of the (sequence, memory)
  segments (packed.py, padded.py); dispatch.py: where each routed token goes in them.
"""

from memlab.models.layers.mom.config import MoMConfig
from memlab.models.layers.mom.layer import MoMAttention
from memlab.models.layers.mom.state import MoMState

__all__ = ["MoMAttention", "MoMConfig", "MoMState"]
