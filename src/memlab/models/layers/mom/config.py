"""The options of a MoM layer (``model.mixer.*``), typed and bounded."""

from __future__ import annotations

from dataclasses import dataclass

from memlab.kernels.backend import BACKENDS
from memlab.kernels.limits import MAX_COMBINE_SLOTS, MAX_CONV_WIDTH, MAX_HEAD_DIM
from memlab.models.schema import Schema, option


@dataclass(frozen=True)
class MoMConfig(Schema):
    """MoMAttention's options; see its docstring for their meaning."""

    num_heads: int = option(4, ge=1)
    head_dim: int = option(64, ge=1, le=MAX_HEAD_DIM)
    expand_v: float = 1
    num_memories: int = option(4, ge=1)
    topk: int = option(2, ge=1)
    shared_mem: bool = True
    aux_loss_weight: float = option(1e-3, ge=0)
    conv_size: int = option(4, ge=1, le=MAX_CONV_WIDTH)
    norm_eps: float = option(1e-5, gt=0)
    backend: str | None = None

    @property
    def value_dim(self) -> int:
        """V = K · expand_v, the value dim of each head."""
        return int(self.head_dim * self.expand_v)

    def check(self) -> None:
        value_dim = self.head_dim * self.expand_v
        self.require(
            "expand_v",
            0 < value_dim <= MAX_HEAD_DIM and float(value_dim).is_integer(),
            f"a factor making head_dim · expand_v (= {value_dim}) a whole number in 1..{MAX_HEAD_DIM}",
        )
        self.require("topk", self.topk <= self.num_memories, f"in 1..num_memories={self.num_memories}")
        # each token combines its topk routed memories and the shared one
        self.require("topk", self.topk + 1 <= MAX_COMBINE_SLOTS, f"at most {MAX_COMBINE_SLOTS - 1}")
        self.require(
            "backend",
            self.backend is None or self.backend in BACKENDS,
            f"null or one of {', '.join(BACKENDS)}",
        )
