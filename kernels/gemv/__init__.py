"""y = x Wᵀ for a few rows of x (a decoding step's projections): one Triton GEMV that reads the
weight once at the memory bandwidth, where a GEMM library's small-batch kernel reaches less."""

from memlab.kernels.gemv.gemv import gemv, gemv_torch

__all__ = ["gemv", "gemv_torch"]
