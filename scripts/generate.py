"""Continue prompts with a checkpoint: ``python scripts/generate.py ckpt_path=<.ckpt | last> prompt="..."``.

A single prompt is streamed as it is written; a batch (``prompt='["a","b"]'`` or
``prompt_file=<one prompt per line>``) is printed at the end. Prefill and decode tokens/s go to
stderr. Sampling: ``sampling.temperature``, ``sampling.top_k``, ``sampling.top_p``, ``seed``.
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

from memlab.generate import generate  # noqa: E402
from memlab.utils.user_errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
