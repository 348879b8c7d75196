"""``scripts/export.py``: a trained run's checkpoint in, a Hugging Face checkpoint folder out."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from memlab.errors import ConfigError
from memlab.interop.pretrained import export_pretrained
from memlab.utils.trained_run import load_network, trained_run

# what each format's folder loads with
LOADERS = {
    "mamba": "transformers.MambaForCausalLM",
    "llama": "transformers.LlamaForCausalLM",
    "gated_deltanet": "fla.models.GatedDeltaNetForCausalLM",
    "mom": "fla.models.MomForCausalLM",
    "memlab": "memlab (model=<the run's model> model.init_from=<folder>)",
}


def export_run(cfg: DictConfig) -> Path:
    """Write the network of ``cfg.ckpt_path`` to ``cfg.out_dir`` in ``cfg.format`` -> the folder."""
    if cfg.format not in ("auto", "memlab", *LOADERS):
        raise ConfigError(f"format={cfg.format}: expected auto, memlab or one of {', '.join(LOADERS)}")
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={cfg.out_dir}: exists and is not a folder")
    ckpt_path, run_cfg = trained_run(cfg)
    net = load_network(run_cfg, ckpt_path, torch.device("cpu"))
    written = export_pretrained(net, out_dir, cfg.format)
    print(f"wrote {out_dir / 'config.json'} and {out_dir / 'model.safetensors'} ({written} format)")
    loader = LOADERS[written]
    print(
        f"load with: {loader}"
        if written == "memlab"
        else f"load with: {loader}.from_pretrained({str(out_dir)!r})"
    )
    return out_dir
