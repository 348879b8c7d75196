"""L2 normalisation over the last dim (q/k of the linear-attention kernels)."""

from memlab.kernels.l2norm.l2norm import l2norm
from memlab.kernels.l2norm.torch_l2norm import l2norm_torch

__all__ = ["l2norm", "l2norm_torch"]
