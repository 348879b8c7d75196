"""memlab: a Lightning + Hydra experiment template for memory-augmented linear sequence models."""

from memlab.kernels_name import keep_kernels_name

__version__ = "0.1.0"

keep_kernels_name()  # transformers must not take memlab's kernels/ folder for its `kernels` package
