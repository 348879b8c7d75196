"""The conversion tables, one per target format (table.py says how to read them)."""

from __future__ import annotations

from memlab.interop.fla_formats import GATED_DELTANET, MOM
from memlab.interop.transformers_formats import LLAMA, MAMBA

FORMATS = (MAMBA, LLAMA, GATED_DELTANET, MOM)
