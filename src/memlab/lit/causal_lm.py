"""LightningModule for next-token training of any memlab language model."""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics import MeanMetric

from memlab.data.labels import IGNORE_INDEX
from memlab.errors import ConfigError
from memlab.lit.metrics import GroupedAccuracy
from memlab.lit.optim import warmup_cosine, weight_decay_groups
from memlab.lit.stat_tags import stat_tags


class CausalLMModule(LightningModule):
    """Next-token cross-entropy on labelled positions (label −100 = ignored) + the model's aux losses.

    Batches are dicts: ``input_ids`` int64 [B, T], ``labels`` int64 [B, T] (already aligned:
    labels[:, t] is the target after reading input_ids[:, :t+1]), optionally ``cu_seqlens``
    (int [N+1], packed documents) and ``num_kv_pairs`` int64 [B] (accuracy is also reported
    per number of pairs). Logs ``{train,val,test}/loss|acc|ppl``, ``train/aux/<name>``,
    ``val/acc_by_pairs/<n>`` and whatever stats the model returns, under their own tags.

    Args:
        net: the language model (``memlab.models.LanguageModel``).
        lr: peak learning rate.
        weight_decay: AdamW decay for matrices (norms, biases, embeddings are not decayed).
        betas: AdamW betas.
        warmup_steps: linear warmup length in optimizer steps.
        min_lr_ratio: the cosine schedule ends at lr · min_lr_ratio at the trainer's max_steps.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        _check_hparams(lr, weight_decay, betas, warmup_steps, min_lr_ratio)
        self.save_hyperparameters(ignore=["net"], logger=False)
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
        losses, correct, _, out = self._token_losses(batch)
        ce = losses.mean()
        loss = ce + sum(out.aux_losses.values(), torch.zeros((), device=ce.device))
        self.log("train/loss", ce, prog_bar=True)
        self.log("train/acc", correct.float().mean())
        for name, value in out.aux_losses.items():
            self.log(f"train/aux/{name}", value)
        for tag, value in stat_tags(out.stats).items():
            self.log(tag, value)
        return loss

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

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            weight_decay_groups(self.net, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas)
        )
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        if not math.isfinite(total):
            # an endless stream without max_steps would train forever on a schedule of no length
            raise ConfigError("the learning-rate schedule ends at trainer.max_steps, which must be >= 1")
        schedule = functools.partial(
            warmup_cosine, warmup_steps=hp.warmup_steps, total_steps=int(total), min_lr_ratio=hp.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        # `name`: LearningRateMonitor's tag (train/lr/pg<i>), beside train/loss rather than first
        lr_scheduler = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}


def _check_hparams(
    lr: float, weight_decay: float, betas: tuple[float, float], warmup_steps: int, min_lr_ratio: float
) -> None:
    """Raise ConfigError naming the first ``module.*`` hyper-parameter outside its range (before
    the optimizer, built inside fit, would fail on it)."""

    def real(value: object) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    if not real(lr) or lr <= 0:
        raise ConfigError(f"module.lr must be a finite number > 0 (got {lr!r})")
    if not real(weight_decay) or weight_decay < 0:
        raise ConfigError(f"module.weight_decay must be a finite number >= 0 (got {weight_decay!r})")
    if (
        not isinstance(betas, list | tuple)
        or len(betas) != 2
        or not all(real(b) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"module.betas must be two numbers in [0, 1) (got {betas!r})")
    if not isinstance(warmup_steps, numbers.Integral) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ConfigError(f"module.warmup_steps must be an integer >= 0 (got {warmup_steps!r})")
    if not real(min_lr_ratio) or not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"module.min_lr_ratio must be a number in [0, 1] (got {min_lr_ratio!r})")
