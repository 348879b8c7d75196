"""Export a checkpoint as a Hugging Face folder: ``python scripts/export.py ckpt_path=<.ckpt> out_dir=<dir>``.

Writes config.json and model.safetensors that transformers' MambaForCausalLM (model=mamba) or
LlamaForCausalLM (the Transformer), or flash-linear-attention's GatedDeltaNetForCausalLM
(model=gdn) or MomForCausalLM (model=mom) load with ``from_pretrained(out_dir)``; MemMamba, and
any model with ``format=memlab``, in memlab's own format (``model.init_from`` reads all of them).
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

from memlab.interop.export_run import export_run  # noqa: E402
from memlab.utils.user_errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(ROOT / "configs"), config_name="export")
def main(cfg: DictConfig) -> None:
    export_run(cfg)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
