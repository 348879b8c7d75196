"""Gated delta rule: S_t = e^{g_t}(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale·S_tᵀ q_t.

``chunk_gated_delta_rule`` for training and prefill, ``fused_recurrent_gated_delta_rule``
for decoding, ``naive_recurrent_gated_delta_rule`` as the slow ground truth for tests.
"""

from memlab.kernels.gated_delta_rule.chunk import chunk_gated_delta_rule
from memlab.kernels.gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule
from memlab.kernels.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

__all__ = [
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "naive_recurrent_gated_delta_rule",
]
