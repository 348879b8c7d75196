"""MemMamba (arXiv 2510.03279): a Mamba-1 layer that takes notes (``layer``), its options
(``config``), the note pool every token reads (``note_pool``, over the chunks of
``chunk_layout``) and the attention that reads it (``pool_attention``)."""

from memlab.models.layers.memmamba.config import MemMambaConfig
from memlab.models.layers.memmamba.layer import MemMamba, MemMambaState
from memlab.models.layers.memmamba.note_pool import NotePool
from memlab.models.layers.memmamba.pools import PoolState, PoolView

__all__ = ["MemMamba", "MemMambaConfig", "MemMambaState", "NotePool", "PoolState", "PoolView"]
