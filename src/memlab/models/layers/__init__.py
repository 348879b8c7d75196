"""Token mixers: the layers that differ between the architectures memlab compares."""

from memlab.models.layers.attention import Attention

__all__ = ["Attention"]
