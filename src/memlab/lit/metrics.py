"""Metrics beyond torchmetrics' stock ones."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class GroupedAccuracy(Metric):
    """Token accuracy split by an integer group per token (e.g. MQAR's number of key-value pairs).

    ``update(correct, group)``: correct bool [N], group int64 [N] in [0, num_groups).
    ``compute()`` -> {group: accuracy} for the groups seen (across ranks).
    """

    full_state_update = False

    def __init__(self, num_groups: int = 1025) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, group: torch.Tensor) -> None:
        group = group.clamp(0, self.num_groups - 1)
        self.correct += torch.bincount(group, weights=correct.float(), minlength=self.num_groups).long()
        self.total += torch.bincount(group, minlength=self.num_groups)

    def compute(self) -> dict[int, torch.Tensor]:
        seen = self.total.nonzero().flatten().tolist()
        return {g: self.correct[g].float() / self.total[g] for g in seen}
