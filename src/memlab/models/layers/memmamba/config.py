"""MemMamba's options (``model.mixer.*``), its Mamba backbone's nested under ``backbone``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from memlab.models.layers.mamba import MambaConfig
from memlab.models.schema import Schema, option


@dataclass(frozen=True)
class MemMambaConfig(Schema):
    """The options of a MemMamba layer.

    chunk_size: w, tokens per note.
    pool_size: K, notes in a layer's pool chosen by priority.
    recent_slots: R, notes of the most recent chunks a pool also holds (0: none).
    summary_dim: width of a note's summary.
    num_heads, head_dim: shape of both retrieval attentions.
    cross_token: attend from each token to its layer's pool.
    cross_layer_period: p; layers with (layer_idx + 1) mod p == 0 attend to earlier layers'
        pools; 0 turns cross-layer attention off.
    cross_layer_span: g, how many earlier layers those read; None = p.
    fusion: how retrieved context joins u (see ``MemMamba``).
    note_scorer: "learned" (sigmoid of a linear score of the max-pool) or "positional"
        (priority 1 for chunks starting at a position t with t % note_period < note_window,
        1/2 otherwise).
    note_period, note_window: the positional schedule.
    norm_eps: epsilon of the summary RMSNorm.
    backbone: the Mamba-1 backbone's options (``model.mixer.backbone.*``).
    """

    chunk_size: int = option(32, ge=1)
    pool_size: int = option(50, ge=1)
    recent_slots: int = option(0, ge=0)
    summary_dim: int = option(64, ge=1)
    num_heads: int = option(4, ge=1)
    head_dim: int = option(64, ge=1)
    cross_token: bool = True
    cross_layer_period: int = option(4, ge=0)
    cross_layer_span: int | None = option(None, ge=1)
    fusion: Literal["gated", "weighted", "residual"] = "gated"
    note_scorer: Literal["learned", "positional"] = "learned"
    note_period: int = option(200, ge=1)
    note_window: int = option(50, ge=0)
    norm_eps: float = option(1e-5, gt=0)
    backbone: MambaConfig = field(default_factory=MambaConfig)

    def check(self) -> None:
        self.require(
            "note_window", self.note_window <= self.note_period, f"<= note_period={self.note_period}"
        )
        self.require(
            "cross_token",
            self.cross_token or self.cross_layer_period > 0,
            "true when cross_layer_period=0, or MemMamba has no memory path (that is model=mamba)",
        )

    @property
    def span(self) -> int:
        """g: the layers below that cross-layer attention reads (at most; fewer near the bottom)."""
        return self.cross_layer_period if self.cross_layer_span is None else self.cross_layer_span
