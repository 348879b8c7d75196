"""memlab: a Lightning + Hydra experiment template for memory-augmented linear sequence models."""

__version__ = "0.1.0"
