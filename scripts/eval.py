"""Evaluate a checkpoint: ``python scripts/eval.py ckpt_path=<path to .ckpt> task=<task>``.

Tasks: ``mqar`` (the run's MQAR test split), ``ppl_by_length`` (perplexity overall, by position
and by length on a text corpus, e.g. ``data=pg19``), ``passkey`` (text passkey retrieval heatmap).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MEMLAB_ROOT", str(ROOT))
# Hydra must let exceptions through so that a user's mistake is reported as one line.
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from memlab.evaluate import evaluate  # noqa: E402
from memlab.utils.user_errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
