"""The Triton path of ``topk_route`` as a torch.library custom op, the form torch.compile takes
it in: one node of a compiled decoding step rather than a graph break (see
kernels/causal_conv1d/library.py). Forward only."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::topk_route", mutates_args=())
def topk_route_op(x: Tensor, router: Tensor, topk: int, shared_mem: bool) -> tuple[Tensor, Tensor]:
    """triton_route.topk_route_triton: weights fp32 and visited bool, both [N, E + shared_mem]."""
    from memlab.kernels.topk_route.triton_route import topk_route_triton

    return topk_route_triton(x, router, topk, shared_mem)


@topk_route_op.register_fake
def _(x: Tensor, router: Tensor, topk: int, shared_mem: bool) -> tuple[Tensor, Tensor]:
    M = router.shape[0] + int(shared_mem)
    return x.new_empty(x.shape[0], M, dtype=torch.float32), x.new_empty(x.shape[0], M, dtype=torch.bool)
