"""Token mixers: the layers that differ between the architectures memlab compares."""

from memlab.models.layers.attention import Attention
from memlab.models.layers.mamba import Mamba
from memlab.models.layers.memmamba import MemMamba
from memlab.models.layers.mom import MoMAttention

__all__ = ["Attention", "Mamba", "MemMamba", "MoMAttention"]
