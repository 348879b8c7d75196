"""Causal depthwise conv1d (the short convolution in front of linear-attention q/k/v and
Mamba's x branch), optionally restarting at packed-sequence boundaries, with a fused SiLU;
its one-token decoding step against a cached tail; and the token-by-token reference used as
ground truth in tests."""

from memlab.kernels.causal_conv1d.conv import causal_conv1d
from memlab.kernels.causal_conv1d.naive import naive_causal_conv1d
from memlab.kernels.causal_conv1d.update import causal_conv1d_update

__all__ = ["causal_conv1d", "causal_conv1d_update", "naive_causal_conv1d"]
