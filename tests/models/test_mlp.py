"""The SwiGLU block's backward, which recomputes silu(gate) instead of saving it, gives the
gradients autograd gives, bit for bit, and saves less."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.models.mlp import SwiGLU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_equal_autograd_and_fewer_bytes_are_saved(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(16, mlp_ratio=2).to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)

    def plain(x):
        gate, up = mlp.gate_up(x).chunk(2, dim=-1)
        return mlp.down(F.silu(gate) * up)

    runs = []
    for fn in (mlp, plain):
        saved = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(x)
        runs.append((y, torch.autograd.grad(y.square().sum(), [x, *mlp.parameters()]), sum(saved.values())))
    (y, grads, saved), (y_ref, grads_ref, saved_ref) = runs
    assert torch.equal(y, y_ref) and all(map(torch.equal, grads, grads_ref))
    assert saved_ref - saved == 3 * 5 * 32 * dtype.itemsize  # silu(gate), [tokens, hidden]
