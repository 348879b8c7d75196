"""Hugging Face checkpoint formats: export memlab networks to transformers' and
flash-linear-attention's classes, and start from their checkpoints (``model.init_from``).

Importing this package keeps the name ``kernels`` for the PyPI package transformers looks for
(kernels_name.py), so that transformers imports cleanly next to memlab's kernels folder.
"""

from memlab.interop.kernels_name import keep_kernels_name
from memlab.interop.pretrained import export_pretrained, load_pretrained

keep_kernels_name()

__all__ = ["export_pretrained", "keep_kernels_name", "load_pretrained"]
