"""The two layouts of MoM's segments, and the rule that picks one.

Every (sequence, memory) pair is one segment: an independent recurrence over the tokens
routed to that memory, in time order; the shared memory is one more segment per sequence
holding every token. All segments of a layer go through ONE gated-delta-rule call, and the
outputs are gathered back to their tokens and mixed with the routing weights. Both layouts
offer the operations ``MoMAttention.forward`` needs (``Layout``), and neither depends on the
routing for its shapes, so neither synchronises with the host.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from memlab.kernels.backend import resolve_fp32_backend
from memlab.kernels.gated_delta_rule.torch_chunk import OP as CHUNK_OP
from memlab.models.layers.mom.packed import PackedLayout
from memlab.models.layers.mom.padded import PaddedLayout
from memlab.models.layers.mom.routing import Routing
from memlab.models.layers.mom.state import MoMState
from memlab.models.modules.short_conv import ShortConvolution


class Layout(Protocol):
    """Where the segments of a routing live, and the layer's operations on them."""

    def __init__(
        self, routing: Routing, cu_seqlens: Tensor | None, state: MoMState | None, backend: str | None
    ) -> None: ...

    def time_conv(self, conv: ShortConvolution, u: Tensor) -> Tensor:
        """conv over each sequence in time order (q, shared by the memories)."""

    def dispatch(self, x: Tensor, q: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """q [B, T, H, K] to each of its token's visits, and x [B, T, D] through the visited
        memory's projection weight [M, D, F]."""

    def memory_conv(
        self, k_conv: ShortConvolution, v_conv: ShortConvolution, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The k and v convs over each segment, never across segments."""

    def gated_delta_rule(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float
    ) -> Tensor:
        """The recurrence over every segment in one call."""

    def combine(self, o: Tensor, weights: Tensor) -> Tensor:
        """Each token's visits' outputs mixed with weights [B, T, S] -> [B·T, H·V]."""


def choose_layout(
    backend: str | None,
    x: Tensor,
    num_rows: int,
    state: MoMState | None,
    cu_seqlens: Tensor | None,
) -> type[PackedLayout] | type[PaddedLayout]:
    """The packed layout where the kernels resolve to Triton for x and no decoding state is
    passed, except with a single memory (num_rows == 1) and no packed documents, where the
    padded rows are the sequences themselves (Gated DeltaNet) and dispatching would only copy
    them; the padded layout otherwise."""
    if state is not None or (num_rows == 1 and cu_seqlens is None):
        return PaddedLayout
    return PackedLayout if resolve_fp32_backend(backend, x, CHUNK_OP, (x,)) == "triton" else PaddedLayout
