"""The evaluation pipeline behind ``scripts/eval.py``: a trained checkpoint in, task metrics out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError
from memlab.eval.text_task import TextTask
from memlab.utils.checkpoint_match import check_same_network
from memlab.utils.checkpoints import load_checkpoint
from memlab.utils.config_tree import print_config_tree
from memlab.utils.instantiate import instantiate_group, instantiate_module
from memlab.utils.results_table import report_results
from memlab.utils.trained_run import (
    AMP_DTYPES,
    load_network,
    released_run,
    torch_device,
    trained_run,
    whole_number,
)

TASKS = ("mqar", "ppl_by_length", "passkey", "lm_eval", "fidelity")
_TEXT_DATA = "memlab.data.text.TextDataModule"
# The text data keys that give a network's token ids their meaning.
_TOKENIZER_KEYS = ("tokenizer", "eos_token", "vocab_size")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the model of the run that wrote ``cfg.ckpt_path`` (from its ``.hydra/config.yaml``),
    load the checkpoint and run ``cfg.task`` on it.

    mqar: the run's own MQAR test split (override any of its keys with ``data.<key>=...``).
    ppl_by_length: perplexity overall, per position bucket and per length on the test documents
    of the run's text corpus, or of the corpus chosen with ``data=<name>`` (e.g. ``data=pg19``).
    passkey: text passkey retrieval on a length × depth grid, with the run's tokenizer.
    fidelity: MemMamba's memory-fidelity metrics ETMF and ECLMF per layer on the test documents.
    A released model, ``model=<name> model.init_from=<folder | Hub name>`` in place of
    ``ckpt_path``, takes the text tasks on the corpus of ``data=<name>`` (memlab.interop).
    """
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task} is not one of: {', '.join(TASKS)}")
    output_dir = Path(cfg.paths.output_dir)
    # the network exactly as trained (or released), whatever data config the task then reads
    ckpt_path, run_cfg = released_run(cfg) or trained_run(cfg)
    if ckpt_path is None and cfg.task == "mqar":
        raise ConfigError("task=mqar tests a trained run on its own MQAR split: give ckpt_path=<.ckpt>")
    if cfg.get("data"):
        run_cfg.data = eval_data_config(run_cfg.data, cfg.data)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.task == "mqar":
        return _trainer_test(cfg, run_cfg, ckpt_path, output_dir)
    if cfg.task == "lm_eval":
        from memlab.eval.lm_eval.task import run_lm_eval

        return run_lm_eval(cfg, run_cfg, ckpt_path, output_dir)
    return _text_task(cfg, run_cfg, ckpt_path, output_dir)


def eval_data_config(run_data: DictConfig, override: DictConfig) -> DictConfig:
    """The data config a task reads: the run's, with the keys of ``data.<key>=...`` overrides merged
    in, or, for ``data=<corpus>`` (an override with a ``_target_``), that corpus' config instead.

    A corpus replacing a text run's corpus keeps the run's ``tokenizer``, ``eos_token`` and
    ``vocab_size``: the network's token ids mean nothing under another tokenizer, and the
    corpus configs all default to ``bytes``.
    """
    if "_target_" not in override:
        return OmegaConf.merge(run_data, override)
    data = OmegaConf.create(OmegaConf.to_container(override, resolve=True))
    if run_data.get("_target_") == _TEXT_DATA and data.get("_target_") == _TEXT_DATA:
        for key in _TOKENIZER_KEYS:
            if key in run_data:
                data[key] = run_data[key]
    return data


def _trainer_test(cfg: DictConfig, run_cfg: DictConfig, ckpt_path: str, output_dir: Path) -> dict[str, float]:
    datamodule = instantiate(run_cfg.data, _convert_="all")
    module = instantiate_module(run_cfg)
    check_same_network(load_checkpoint(ckpt_path), module, ckpt_path)
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        report_results(metrics, output_dir, f"{cfg.task} — {Path(ckpt_path).name}")
    return metrics


def _text_task(cfg: DictConfig, run_cfg: DictConfig, ckpt_path: str, output_dir: Path) -> dict[str, float]:
    if run_cfg.data.get("_target_") != _TEXT_DATA:
        raise ConfigError(
            f"task={cfg.task} needs a text corpus: the run trained on {run_cfg.data.get('_target_')}; "
            "choose one with data=text_files|pg19|slimpajama|fineweb_edu"
        )
    # every option is checked before the corpus, tokenizer or network is opened
    if cfg.task == "ppl_by_length":
        task, options = _ppl_by_length, _ppl_options(cfg.ppl_by_length)
    elif cfg.task == "fidelity":
        from memlab.eval.fidelity_task import fidelity_options, run_fidelity

        task, options = run_fidelity, fidelity_options(cfg.fidelity)
    else:
        task, options = _passkey, _passkey_options(cfg.passkey)
    if cfg.get("amp_dtype") not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype={cfg.get('amp_dtype')}: expected bfloat16, float16 or null")
    device = torch_device(cfg.get("device", "auto"))
    datamodule = instantiate(run_cfg.data, _convert_="all")
    tokenizer = datamodule.tokenizer
    net = load_network(run_cfg, ckpt_path, device)
    if tokenizer.vocab_size > net.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary ({net.vocab_size})"
        )
    amp = AMP_DTYPES[cfg.get("amp_dtype")] if device.type == "cuda" else None
    title = f"{cfg.task} — {Path(ckpt_path or run_cfg.model.init_from).name}"
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics, figure, table = task(TextTask(net, datamodule, options, amp, title, output_dir))
    loggers = instantiate_group(cfg.get("logger"))
    _to_tensorboard(loggers, cfg.task, figure, table)
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=0)
        logger.finalize("success")
    # the position buckets go to metrics.json, the table and TensorBoard, not to the terminal
    shown = {k: v for k, v in metrics.items() if not k.startswith("ppl/position/")}
    report_results(metrics, output_dir, f"{title} (tokenizer {tokenizer.name})", shown)
    return metrics


def _ppl_by_length(task: TextTask) -> tuple[dict[str, float], Any, str]:
    """Perplexity overall, by position and by length: (metrics, figure, markdown table)."""
    from memlab.eval.ppl_by_length import evaluate_ppl_by_length, plot_ppl_by_length

    opts = task.options
    lengths = opts["lengths"]
    tokens = task.tokens(opts["max_blocks"] * (lengths[-1] + 1))
    result = evaluate_ppl_by_length(
        task.net,
        tokens,
        lengths,
        task.datamodule.tokenizer.name,
        opts["bucket"],
        opts["max_blocks"],
        opts["chunk_size"],
        opts["batch_size"],
        task.amp,
    )
    if not result.lengths:
        raise ConfigError(f"ppl_by_length: no length could be evaluated ({result.skipped})")
    return task.outputs(result, "ppl_by_length", plot_ppl_by_length)


def _passkey(task: TextTask) -> tuple[dict[str, float], Any, None]:
    """Text passkey retrieval on the length × depth grid: (metrics, heatmap figure, no table)."""
    from memlab.eval.heatmap import plot_heatmap
    from memlab.eval.passkey_text import evaluate_passkey

    result = evaluate_passkey(task.net, task.datamodule.tokenizer, **task.options, autocast=task.amp)
    path = task.output_dir / "passkey_heatmap.png"
    figure = plot_heatmap(result.accuracy, result.lengths, result.depths, task.title, path)
    return result.metrics(), figure, None


def _ppl_options(opts: DictConfig) -> dict[str, Any]:
    if opts.split not in ("val", "test"):
        raise ConfigError(f"ppl_by_length.split={opts.split}: expected val or test")
    max_length = whole_number("ppl_by_length.max_length", opts.max_length, optional=True)
    lengths = sorted(whole_number("ppl_by_length.lengths", n) for n in opts.lengths)
    lengths = [n for n in lengths if max_length is None or n <= max_length]
    if not lengths:
        raise ConfigError("ppl_by_length.lengths: no length left under ppl_by_length.max_length")
    return {
        "split": opts.split,
        "lengths": lengths,
        "bucket": whole_number("ppl_by_length.bucket", opts.bucket),
        "max_blocks": whole_number("ppl_by_length.max_blocks", opts.max_blocks),
        "chunk_size": whole_number("ppl_by_length.chunk_size", opts.chunk_size, optional=True),
        "batch_size": whole_number("ppl_by_length.batch_size", opts.batch_size),
    }


def _passkey_options(opts: DictConfig) -> dict[str, Any]:
    # depths are checked by evaluate_passkey, which owns their meaning
    return {
        "lengths": [whole_number("passkey.lengths", n) for n in opts.lengths],
        "depths": list(opts.depths),
        "trials": whole_number("passkey.trials", opts.trials),
        "seed": whole_number("passkey.seed", opts.seed, minimum=0),
        "chunk_size": whole_number("passkey.chunk_size", opts.chunk_size, optional=True),
    }


def _to_tensorboard(loggers: list[Logger], tag: str, figure: Any, table: str | None) -> None:
    import matplotlib.pyplot as plt

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, close=False)
            if table is not None:
                logger.experiment.add_text(f"{tag}/table", table)
    plt.close(figure)
