"""A trained memlab checkpoint as (network, tokenizer), rebuilt from its run's own config."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from memlab.data.text.tokenizer import TextTokenizer
from memlab.errors import ConfigError
from memlab.utils.trained_run import load_network, run_config_of

_TEXT_DATA = "memlab.data.text.TextDataModule"


def run_config(ckpt_path: str) -> DictConfig:
    """The ``.hydra/config.yaml`` of the run whose ``checkpoints/`` folder holds ``ckpt_path``,
    with its model config resolved (model keys interpolate the run's data config)."""
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"checkpoint={ckpt_path}: no such file")
    return run_config_of(ckpt_path, f"checkpoint={ckpt_path}")


def load_text_model(
    run_cfg: DictConfig, ckpt_path: str, device: torch.device
) -> tuple[nn.Module, TextTokenizer, int | None]:
    """(network in eval mode on ``device``, the run's tokenizer, the run's data.seq_len)."""
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
