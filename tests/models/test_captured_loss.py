"""``CapturedLoss`` refuses what a CUDA graph cannot hold; its replay against eager training is
checked on the GPU (tests/gpu/test_captured_loss.py)."""

from __future__ import annotations

import pytest
import torch

from memlab.models import LanguageModel
from memlab.models.captured_loss import CapturedLoss
from memlab.models.captured_step import NotCapturable
from tests.models.mixers import MIXERS


def test_a_model_off_the_gpu_is_not_capturable() -> None:
    model = LanguageModel(64, 32, 1, MIXERS["gdn"])
    ids = torch.randint(64, (2, 17))
    with pytest.raises(NotCapturable, match="CUDA device"):
        CapturedLoss(model, ids[:, :-1], ids[:, 1:].flatten())
