"""LightningModule for next-token training of any memlab language model."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from memlab.data.labels import IGNORE_INDEX
from memlab.errors import ConfigError
from memlab.lit.metrics import GroupedAccuracy
from memlab.lit.optim import warmup_cosine_schedule, weight_decay_groups
from memlab.lit.stat_tags import stat_tags
from memlab.models.captured_loss import CapturedLoss
from memlab.models.captured_step import NotCapturable
from memlab.models.lm import LMOutput

# CUDA graphs replay fixed parameter storage, which sharding gathers and frees every step
SHARDED_CUDA_GRAPH = "module.cuda_graph needs the whole model on each GPU, not sharded (trainer=fsdp)"


class CausalLMModule(LightningModule):
    """Next-token cross-entropy on labelled positions (label −100 = ignored) + the model's aux losses.

    Batches are dicts: ``input_ids`` int64 [B, T], ``labels`` int64 [B, T] (already aligned:
    labels[:, t] is the target after reading input_ids[:, :t+1]), optionally ``cu_seqlens``
    (int [N+1], packed documents) and ``num_kv_pairs`` int64 [B] (accuracy is also reported
    per number of pairs). Logs ``{train,val,test}/loss|acc|ppl``, ``train/aux/<name>``,
    ``val/acc_by_pairs/<n>`` and whatever stats the model returns, under their own tags.

    Args:
        net: the language model (``memlab.models.LanguageModel``).
        optimizer: builds the optimizer from parameter groups, e.g.
            ``functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.1)``; its weight decay
            applies to matrices only (norms, biases, embeddings are not decayed). Default: AdamW
            with lr 1e-3, weight_decay 0.1, betas (0.9, 0.95).
        scheduler: builds the per-step learning-rate scheduler as ``scheduler(optimizer,
            total_steps=<the trainer's max_steps>)``. Default: ``warmup_cosine_schedule`` with
            warmup_steps 100, min_lr_ratio 0.1.
        compile: ``torch.compile`` the network's blocks before training (``compile_blocks``).
        cuda_graph: replay the training forward and backward from CUDA graphs captured at the
            first batch's shape (``memlab.models.captured_loss``): the same step without the
            host's launch overhead. Batches of another shape, and packed documents
            (``cu_seqlens``), run eagerly. True needs a GPU and an unsharded model; "auto"
            captures where those hold and the step can be captured, else trains eagerly.

    The checkpoint's hyper-parameters record both as plain values, ``{"optimizer": {"_target_":
    ..., "lr": ...}, "scheduler": {...}}``, for a resume to compare with its own.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler] | None = None,
        compile: bool = False,
        cuda_graph: bool | str = False,
    ) -> None:
        super().__init__()
        if not (isinstance(cuda_graph, bool) or cuda_graph == "auto"):
            raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
        self.compile_net, self._compiled = compile, False
        self.cuda_graph, self._captured, self._warned_packed = cuda_graph, None, False
        self._graphs = cuda_graph is True  # "auto" is settled at fit start, on the device
        self.make_optimizer = optimizer or functools.partial(
            torch.optim.AdamW, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95)
        )
        self.make_scheduler = scheduler or functools.partial(
            warmup_cosine_schedule, warmup_steps=100, min_lr_ratio=0.1
        )
        recorded = {"optimizer": _settings(self.make_optimizer), "scheduler": _settings(self.make_scheduler)}
        self.save_hyperparameters(recorded, logger=False)
        self.net = net
        self.loss_mean = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.acc_mean = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.acc_by_pairs = nn.ModuleDict({s: GroupedAccuracy() for s in ("val", "test")})

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_ids, cu_seqlens=cu_seqlens).logits

    def _token_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
        """-> per-token CE [N] and correctness [N] at labelled positions, their mask [B, T], model output."""
        labels = batch["labels"]
        mask = labels != IGNORE_INDEX
        out = self.net(batch["input_ids"], cu_seqlens=batch.get("cu_seqlens"), logits_mask=mask)
        logits = out.logits.float()
        targets = labels[mask]
        return F.cross_entropy(logits, targets, reduction="none"), logits.argmax(-1) == targets, mask, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The loss comes from the network chunk by chunk: no [tokens, vocab] logits in memory.
        # Every position goes to it, unlabelled ones (IGNORE_INDEX) left out of the mean: picking
        # the labelled rows first would wait for the GPU (a data-dependent shape) every step.
        targets = batch["labels"].flatten()
        out = self._train_forward(batch["input_ids"], batch.get("cu_seqlens"), targets)
        ce = out.loss
        loss = ce + sum(out.aux_losses.values(), torch.zeros((), device=ce.device))
        labelled = targets != IGNORE_INDEX
        self.log("train/loss", ce, prog_bar=True)
        self.log("train/acc", (out.correct & labelled).sum() / labelled.sum().clamp_min(1))
        for name, value in out.aux_losses.items():
            self.log(f"train/aux/{name}", value)
        for tag, value in stat_tags(out.stats).items():
            self.log(tag, value)
        return loss

    def _train_forward(
        self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None, targets: torch.Tensor
    ) -> LMOutput:
        """The network's loss on a training batch: from the captured graphs with ``cuda_graph``
        where the batch has the captured shape, else eagerly."""
        if self._graphs and cu_seqlens is None:
            if self._captured is None:
                self._capture(input_ids, targets)
            if self._captured is not None and self._captured.matches(input_ids, targets):
                return self._captured(input_ids, targets)
        elif self._graphs and not self._warned_packed:
            warnings.warn("module.cuda_graph: packed documents (cu_seqlens) run eagerly", stacklevel=2)
            self._warned_packed = True
        return self.net(input_ids, cu_seqlens=cu_seqlens, targets=targets)

    def _capture(self, input_ids: torch.Tensor, targets: torch.Tensor) -> None:
        """Capture the training step at this batch's shape; a step that cannot be captured is
        an error under cuda_graph=True and, under "auto", eager training from now on."""
        try:
            self._captured = CapturedLoss(self.net, input_ids, targets)
        except NotCapturable as error:
            if self.cuda_graph is True:
                raise ConfigError(f"module.cuda_graph: {error}; set module.cuda_graph=false") from None
            warnings.warn(f"module.cuda_graph=auto: training eagerly, {error}", stacklevel=3)
            self._graphs = False

    def _apply(self, fn: Callable, recurse: bool = True) -> CausalLMModule:
        self._captured = None  # new parameter storage (.to(), .cuda()): the graphs read the old
        return super()._apply(fn, recurse)

    def _eval_step(self, stage: str, batch: dict) -> None:
        losses, correct, mask, _ = self._token_losses(batch)
        self.loss_mean[stage].update(losses)
        self.acc_mean[stage].update(correct.float())
        if "num_kv_pairs" in batch:
            groups = batch["num_kv_pairs"][:, None].expand_as(mask)[mask]
            self.acc_by_pairs[stage].update(correct, groups)

    def _eval_epoch_end(self, stage: str) -> None:
        loss = self.loss_mean[stage].compute()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=50.0)))
        self.log(f"{stage}/acc", self.acc_mean[stage].compute(), prog_bar=stage == "val")
        for pairs, acc in self.acc_by_pairs[stage].compute().items():
            self.log(f"{stage}/acc_by_pairs/{pairs}", acc)
        for metric in (self.loss_mean[stage], self.acc_mean[stage], self.acc_by_pairs[stage]):
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_model(self) -> None:
        """Under a sharding strategy (``trainer=fsdp``: ``memlab.lit.fsdp.FSDP2Strategy``) the
        strategy shards the network; under any other the network stays whole. Then, with
        ``compile``, its blocks are compiled."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if callable(shard):
            shard(self.net)
        if self.compile_net and not self._compiled:  # fit, then test: compiled once
            self.net.compile_blocks()
            self._compiled = True

    def on_fit_start(self) -> None:
        # a device without CUDA is refused by the capture itself, at the first batch
        sharded = callable(getattr(self.trainer.strategy, "shard", None))
        if self.cuda_graph == "auto":
            self._graphs = self.device.type == "cuda" and not sharded
        elif self.cuda_graph and sharded:
            raise ConfigError(SHARDED_CUDA_GRAPH)

    def configure_optimizers(self) -> dict:
        optimizer = self.make_optimizer(weight_decay_groups(self.net))
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        if not math.isfinite(total):
            # an endless stream without max_steps would train forever on a schedule of no length
            raise ConfigError("the learning-rate schedule ends at trainer.max_steps, which must be >= 1")
        scheduler = self.make_scheduler(optimizer, total_steps=int(total))
        # `name`: LearningRateMonitor's tag (train/lr/pg<i>), beside train/loss rather than first
        lr_scheduler = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}


def _settings(make: Callable) -> dict[str, Any]:
    """What a partial (``functools.partial``, as Hydra's ``_partial_`` makes) builds, as plain
    values: ``{"_target_": "torch.optim.adamw.AdamW", "lr": 0.003, ...}``."""
    func = getattr(make, "func", make)
    target = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', type(func).__name__)}"
    return {"_target_": target, **getattr(make, "keywords", {})}
