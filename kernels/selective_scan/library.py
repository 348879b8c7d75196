"""The Triton path of ``selective_state_update`` as a torch.library custom op, the form
torch.compile takes it in: one node of a compiled decoding step rather than a graph break (see
kernels/causal_conv1d/library.py). Forward only; the state is updated in place."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::selective_state_update", mutates_args=("state",))
def selective_state_update_op(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor | None,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    dt_proj: Tensor | None,
    A_log: Tensor | None,
) -> Tensor:
    """triton_state_update.selective_state_update_triton: out [batch, dim] in x's dtype."""
    from memlab.kernels.selective_scan.triton_state_update import selective_state_update_triton

    return selective_state_update_triton(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=dt_softplus, dt_proj=dt_proj, A_log=A_log
    )


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_proj, A_log) -> Tensor:
    return x.new_empty(state.shape[0], state.shape[1])
