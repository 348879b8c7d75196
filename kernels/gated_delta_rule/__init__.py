"""Gated delta rule: S_t = e^{g_t}(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale·S_tᵀ q_t.

``chunk_gated_delta_rule`` for training and prefill, ``fused_recurrent_gated_delta_rule``
for decoding, ``gated_delta_rule_step`` for a model's whole decoding step (convs, gates and
several memories included), ``naive_recurrent_gated_delta_rule`` as the slow ground truth.
"""

from memlab.kernels.gated_delta_rule.chunk import chunk_gated_delta_rule
from memlab.kernels.gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule
from memlab.kernels.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from memlab.kernels.gated_delta_rule.step import gated_delta_rule_step

__all__ = [
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "gated_delta_rule_step",
    "naive_recurrent_gated_delta_rule",
]
