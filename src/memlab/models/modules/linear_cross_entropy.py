"""Cross-entropy of a linear head's logits, computed chunk by chunk: the [N, vocab] logits,
their fp32 copy and their gradient never exist whole.

At 32K tokens and a 32K vocabulary those three tensors take 10 GiB, more than a 340M model's
every other activation. Here each chunk of rows computes its logits (in the hidden states'
dtype), its log-sum-exp and loss in fp32, and at once the gradients of the hidden rows and
its share of the head's gradient; the backward pass only scales the saved gradients. The
same idea as liger-kernel's fused linear cross-entropy (Hsu et al. 2024, arXiv 2410.10989),
in plain PyTorch: the two matmuls per chunk dominate, as in the unfused loss.
"""

from __future__ import annotations

import torch

# Rows per chunk: fp32 logits of about 256 MiB at a 32K vocabulary.
CHUNK_ELEMENTS = 1 << 26


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows):
        w = weight.to(hidden.dtype)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        valid = targets != ignore_index
        count = valid.sum().clamp_min(1).to(acc)
        safe = torch.where(valid, targets, 0)[:, None]
        total = hidden.new_zeros((), dtype=acc)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if ctx.needs_input_grad[1] else None
        correct = torch.empty_like(valid)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h = hidden[rows]
            logits = (h @ w.T).to(acc)  # [n, vocab]
            correct[rows] = logits.argmax(-1) == targets[rows]
            lse = logits.logsumexp(-1)
            keep = valid[rows]
            total += torch.where(keep, lse - logits.gather(-1, safe[rows])[:, 0], 0.0).sum()
            # d(mean loss)/d(logits) = (softmax − onehot(target)) · valid / count
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(-1, safe[rows], torch.full_like(lse[:, None], -1.0))
            grad = grad.mul_((keep / count)[:, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ w
            if grad_weight is not None:
                grad_weight += (grad.T @ h).to(acc)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return total / count, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        dh = None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype)
        dw = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return dh, dw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    return_correct: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` over the rows whose
    target is not ``ignore_index`` (0 when there are none), as
    ``F.cross_entropy(F.linear(hidden, weight).float(), targets)``.

    hidden: [N, D] in the compute dtype (bf16 under autocast, else the model's); weight:
    [vocab, D] (fp32 master weights are cast to hidden's dtype for the matmuls); targets:
    int64 [N]. Returns an fp32 scalar (fp64 for fp64 inputs), and with ``return_correct``
    also bool [N], whether each row's most likely token is its target. The gradients are
    computed during the forward pass, so the loss supports one backward.
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    loss, correct = _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows)
    return (loss, correct) if return_correct else loss
