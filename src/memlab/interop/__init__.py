"""Hugging Face checkpoint formats: export memlab networks to transformers' and
flash-linear-attention's classes, and start from their checkpoints (``model.init_from``)."""

from memlab.interop.pretrained import export_pretrained, load_pretrained

__all__ = ["export_pretrained", "load_pretrained"]
