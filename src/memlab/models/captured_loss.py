"""A language model's training forward and backward, captured once in CUDA graphs and replayed.

A training step of memlab's recurrent models launches a few thousand kernels, many of them
small, and at paper shapes the host can take longer to enqueue them than the GPU takes to run
them. The shapes of a step are fixed by the batch shape and no op reads a value back to the
host, so the forward (embedding to the chunked loss) and its backward can each be recorded
once and then replayed per step: one launch each, whatever the number of kernels.

The replay is an autograd function over the parameters, so ``loss.backward()``, gradient
accumulation, clipping and any optimizer work as in eager training. A graph reads its inputs
and parameters at fixed addresses: the batch is copied into the captured input buffers, and
the optimizer must update the parameters in place (every torch optimizer does). Moving the
model (``.to()``) gives it new parameter storage: capture again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memlab.models.captured_step import NotCapturable
from memlab.models.lm import LMOutput

# Forward-and-backward passes before the capture: Triton's autotuning and the libraries'
# workspaces must be settled, since nothing may allocate or tune during a capture.
WARMUP_PASSES = 2


@dataclass(frozen=True)
class _Layout:
    """Where each output of the forward sits in the flat tuple the graph returns."""

    aux: tuple[str, ...]  # aux loss names, in order
    stats: tuple[tuple[int, str], ...]  # (layer, name) of each statistic, in order


class CapturedLoss:
    """``model(input_ids, targets=targets)`` and its backward at one batch shape, replayed
    from CUDA graphs; the autocast state current at construction is the one captured.

    Args:
        model: a ``LanguageModel`` on a CUDA device.
        input_ids: int64 [B, T], a batch of the shape to capture (it is run, not trained on).
        targets: int64 [B·T], its targets (-100: no loss there).

    Calling it with a batch of the same shape returns an ``LMOutput`` (loss, correct,
    aux_losses, stats; no logits) whose loss and aux losses backpropagate into the model's
    parameters. Raises ``NotCapturable`` where the model's step cannot be captured (an op that
    reads values back to the host); compiled blocks that fail to compile in the warm-up passes
    raise the compiler's own error.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> None:
        if not input_ids.is_cuda:
            raise NotCapturable("CUDA graphs need the model and the batch on a CUDA device")
        self.model = model
        self.params = tuple(p for p in model.parameters() if p.requires_grad)
        self.input_ids, self.targets = input_ids.clone(), targets.clone()
        self.autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        try:
            self._capture()
        except (torch.OutOfMemoryError, torch._dynamo.exc.TorchDynamoException):
            raise  # a sizing matter, or compiled blocks failing to compile: reported as such
        except RuntimeError as error:  # a host read or a synchronisation inside the step
            raise NotCapturable(f"the training step cannot be captured in a CUDA graph: {error}") from error
        self._static_grads = {g.data_ptr() for g in self.grads if g is not None}

    def matches(self, input_ids: torch.Tensor, targets: torch.Tensor) -> bool:
        """Whether a batch has the captured shapes, dtypes and device."""
        return all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in ((input_ids, self.input_ids), (targets, self.targets))
        )

    def __call__(self, input_ids: torch.Tensor, targets: torch.Tensor) -> LMOutput:
        """The loss of a batch of the captured shape; its backward must run before the next
        call, whose forward overwrites the activations the backward reads."""
        outputs = _Replay.apply(self, input_ids, targets, *self.params)
        loss, correct = outputs[0], outputs[1]
        aux_values = outputs[2 : 2 + len(self.layout.aux)]
        stats: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_layers)]
        for (layer, name), value in zip(self.layout.stats, outputs[2 + len(self.layout.aux) :], strict=True):
            stats[layer][name] = value
        return LMOutput(None, dict(zip(self.layout.aux, aux_values, strict=True)), stats, loss, correct)

    def _forward(self) -> tuple[torch.Tensor, ...]:
        enabled, dtype = self.autocast
        # autocast's weight-cast cache would tie the graph to casts made before the capture
        with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            out = self.model(self.input_ids, targets=self.targets)
        self.num_layers = len(out.stats)
        self.layout = _Layout(
            tuple(out.aux_losses), tuple((i, k) for i, layer in enumerate(out.stats) for k in layer)
        )
        stats = (out.stats[i][k] for i, k in self.layout.stats)
        return (out.loss, out.correct, *out.aux_losses.values(), *stats)

    def _differentiable(self, outputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [o for o in outputs if o.requires_grad]

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                outputs = self._differentiable(self._forward())
                ones = [torch.ones_like(o) for o in outputs]
                torch.autograd.grad(outputs, self.params, ones, allow_unused=True)
        torch.cuda.current_stream().wait_stream(side)
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # thread-local: a data loader's pinning thread may allocate host memory meanwhile
        with torch.cuda.graph(self.forward_graph, capture_error_mode="thread_local"):
            self.outputs = self._forward()
        outputs = self._differentiable(self.outputs)
        self.is_differentiable = tuple(o.requires_grad for o in self.outputs)
        self.grad_outputs = [torch.empty_like(o) for o in outputs]
        with torch.cuda.graph(
            self.backward_graph, pool=self.forward_graph.pool(), capture_error_mode="thread_local"
        ):
            self.grads = torch.autograd.grad(outputs, self.params, self.grad_outputs, allow_unused=True)
        # Drop the captured autograd graph (its memory stays the graphs' own): its nodes would
        # keep the parameters' gradient accumulators on the capture stream, off the training's.
        self.outputs = tuple(o.detach() for o in self.outputs)

    def release_aliases(self) -> None:
        """Give every parameter whose ``.grad`` is a captured gradient buffer a copy of its own.

        Autograd hands a parameter the buffer itself where its grad was None (no copy). The two
        graphs share one memory pool, in which the forward's temporaries occupy the blocks the
        backward later returns its gradients in: the next forward replay overwrites them. While
        the grad is consumed before then (set to None by ``zero_grad``) that costs nothing; a
        grad kept for accumulation must first stop sharing the buffer.
        """
        for p in self.params:
            if p.grad is not None and p.grad.data_ptr() in self._static_grads:
                p.grad = p.grad.clone()


class _Replay(torch.autograd.Function):
    """The captured forward as an autograd op over the parameters; its backward replays the
    backward graph and returns the captured gradients."""

    @staticmethod
    def forward(ctx, captured: CapturedLoss, input_ids: torch.Tensor, targets: torch.Tensor, *params):
        captured.input_ids.copy_(input_ids)
        captured.targets.copy_(targets)
        captured.release_aliases()
        captured.forward_graph.replay()
        ctx.captured = captured
        # copies: the next replay overwrites the captured outputs, and a logged loss may outlive it
        outputs = tuple(o.detach().clone() for o in captured.outputs)
        fixed = [o for o, d in zip(outputs, captured.is_differentiable, strict=True) if not d]
        ctx.mark_non_differentiable(*fixed)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        captured: CapturedLoss = ctx.captured
        wanted = (g for g, d in zip(grads, captured.is_differentiable, strict=True) if d)
        for static, grad in zip(captured.grad_outputs, wanted, strict=True):
            static.copy_(grad)
        captured.backward_graph.replay()
        param_grads = tuple(None if g is None else g.detach() for g in captured.grads)
        return (None, None, None, *param_grads)
