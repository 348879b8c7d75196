"""A trained memlab checkpoint as (network, tokenizer), rebuilt from its run's own config."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from memlab.data.text.tokenizer import TextTokenizer
from memlab.errors import ConfigError

_TEXT_DATA = "memlab.data.text.TextDataModule"


def run_config(ckpt_path: str) -> DictConfig:
    """The ``.hydra/config.yaml`` of the run whose ``checkpoints/`` folder holds ``ckpt_path``,
    with its model config resolved (model keys interpolate the run's data config)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"checkpoint={ckpt_path}: no such file")
    config = path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"checkpoint={ckpt_path}: no training config at {config}")
    cfg = OmegaConf.load(config)
    cfg.model = OmegaConf.to_container(cfg.model, resolve=True)
    return cfg


def load_text_model(
    run_cfg: DictConfig, ckpt_path: str, device: torch.device
) -> tuple[nn.Module, TextTokenizer, int | None]:
    """(network in eval mode on ``device``, the run's tokenizer, the run's data.seq_len)."""
    from memlab.evaluate import load_network

    if run_cfg.data.get("_target_") != _TEXT_DATA:
        raise ConfigError(
            f"lm_eval needs a model trained on text: the run trained on {run_cfg.data.get('_target_')}"
        )
    tokenizer = instantiate(run_cfg.data, _convert_="all").tokenizer
    net = load_network(run_cfg, ckpt_path, device)
    if tokenizer.vocab_size > net.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary ({net.vocab_size})"
        )
    return net, tokenizer, run_cfg.data.get("seq_len")
