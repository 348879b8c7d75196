"""step_linear off the GPU (and with grad, or above GEMV_ROWS rows) is F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.models.modules.step_linear import step_linear


def test_step_linear_is_linear_on_the_cpu() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(7, 12), torch.randn(7)
    for shape in ((1, 12), (3, 1, 12), (2, 5, 12)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(step_linear(x, w), F.linear(x, w))
            torch.testing.assert_close(step_linear(x, w, b), F.linear(x, w, b))


def test_step_linear_passes_gradients() -> None:
    x, w = torch.randn(1, 1, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    step_linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(1, 1, 6))
