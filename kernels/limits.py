"""The sizes each op takes: one place for the domain of every kernel.

Every size from 1 up to these maxima runs on both backends; larger ones are refused before
any launch with a KernelInputError naming the limit (the Triton kernels hold these dims in
registers or unroll over them, so a larger one would fail to compile or spill).
"""

from __future__ import annotations

from memlab.kernels.backend import KernelInputError

MAX_HEAD_DIM = 256  # K and V of the gated delta rule (the serial passes keep 4 blocks of 64)
MAX_STATE_SIZE = 256  # N of the selective scan and its decode step
MAX_CONV_WIDTH = 16  # W of causal_conv1d (its taps are unrolled)
MAX_NORM_DIM = 8192  # D of l2norm and gated_rmsnorm (a row is one register tile)
MAX_COMBINE_SLOTS = 64  # S of combine_routed (its slots are unrolled)
MAX_ROUTED_MEMORIES = 64  # E of topk_route (a token's logits are one register tile)


def check_size(op: str, name: str, size: int, limit: int, what: str = "") -> None:
    """Raise KernelInputError unless 1 <= size <= limit: "op: name=size (what) is out of range;
    supported: 1 to limit"."""
    if not 1 <= size <= limit:
        label = f"{name}={size}" + (f" ({what})" if what else "")
        raise KernelInputError(f"{op}: {label} is out of range; supported: 1 to {limit}")
