"""Train (and test) a model: ``python scripts/train.py [overrides]``; ``-m`` for Hydra multiruns.

Examples:
    python scripts/train.py                               # the default model on MQAR
    python scripts/train.py model=transformer trainer=gpu
    python scripts/train.py experiment=ablate_shared      # a whole ablation, ends with a table
    python scripts/train.py ... ckpt_path=last            # resume the newest run of that name
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MEMLAB_ROOT", str(ROOT))
# Hydra must let exceptions through so that a user's mistake is reported as one line.
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from memlab.errors import NonFiniteError  # noqa: E402
from memlab.train import optimized_value, train  # noqa: E402
from memlab.utils.moved_keys import renamed_overrides  # noqa: E402
from memlab.utils.user_errors import exit_on_user_error, one_line  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return optimized_value(train(cfg), cfg.get("optimized_metric"))
    except NonFiniteError as exc:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # One diverged job of a sweep must not end it before the other jobs and its summary:
        # the job's own folder keeps its checkpoints and NaN metrics; the sweep goes on.
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return float("nan")


if __name__ == "__main__":
    # keys that moved (module.lr is now optimizer.lr, ...) are still read, with a warning
    sys.argv[1:], warnings = renamed_overrides(sys.argv[1:])
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.exit(exit_on_user_error(main))
