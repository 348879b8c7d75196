"""Causal depthwise conv1d (the short convolution in front of linear-attention q/k/v and
Mamba's x branch), optionally restarting at packed-sequence boundaries, with a fused SiLU;
and the token-by-token reference used as ground truth in tests."""

from memlab.kernels.causal_conv1d.conv import causal_conv1d
from memlab.kernels.causal_conv1d.naive import naive_causal_conv1d

__all__ = ["causal_conv1d", "naive_causal_conv1d"]
