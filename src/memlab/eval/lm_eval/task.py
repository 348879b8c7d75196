"""``scripts/eval.py task=lm_eval``: lm-evaluation-harness tasks, groups or suites on a checkpoint;
the harness' results as lm_eval.json and lm_eval.md in the run folder, the metrics in
metrics.json, the terminal table and TensorBoard."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError
from memlab.eval.lm_eval.harness import TASKS_DIR, require_harness
from memlab.utils.results_table import report_results


def run_lm_eval(
    cfg: DictConfig, run_cfg: DictConfig, ckpt_path: str | None, output_dir: Path
) -> dict[str, float]:
    """``task=lm_eval`` of scripts/eval.py on the network of ``run_cfg`` with ``ckpt_path``'s weights
    (None: those of ``model.init_from``)."""
    from memlab.eval.lm_eval.loading import load_text_model
    from memlab.train import instantiate_group
    from memlab.utils.trained_run import torch_device

    options = lm_eval_options(cfg.lm_eval)
    manager = task_manager(options["include_path"])
    check_task_names(manager, options["tasks"])
    from memlab.eval.lm_eval.model import MemlabLM

    net, tokenizer, seq_len = load_text_model(run_cfg, ckpt_path, torch_device(cfg.get("device", "auto")))
    lm = MemlabLM(
        net=net,
        tokenizer=tokenizer,
        batch_size=options["batch_size"],
        max_length=options["max_length"] or seq_len,
        chunk_size=options["chunk_size"],
        amp_dtype=cfg.get("amp_dtype"),
    )
    results = run_harness(lm, options, manager, int(cfg.seed))
    metrics = flat_metrics(results)
    table = write_results(results, output_dir)
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_metrics(metrics, step=0)
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text("lm_eval/table", table)
        logger.finalize("success")
    name = Path(ckpt_path or run_cfg.model.init_from).name
    report_results(metrics, output_dir, f"lm_eval — {name} (tokenizer {tokenizer.name})")
    return metrics


def lm_eval_options(opts: DictConfig) -> dict[str, Any]:
    """The ``lm_eval.*`` keys, checked: every mistake is one ConfigError naming its key."""
    tasks = OmegaConf.to_container(opts.tasks) if OmegaConf.is_list(opts.tasks) else opts.tasks
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"lm_eval.tasks: expected a list of task, group or suite names (got {tasks!r})")
    include = opts.include_path
    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"lm_eval.include_path={include}: no such folder")
    few = opts.num_fewshot
    if few is not None and (isinstance(few, bool) or not isinstance(few, int) or few < 0):
        raise ConfigError(f"lm_eval.num_fewshot: expected an integer >= 0 or null (got {few!r})")
    limit = opts.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Real) or limit <= 0):
        raise ConfigError(f"lm_eval.limit: expected a number > 0 or null (got {limit!r})")
    return {
        "tasks": list(tasks),
        "include_path": include,
        "num_fewshot": few,
        # a fraction of each task's documents below 1, a count from 1 on
        "limit": None if limit is None else (float(limit) if limit < 1 else int(limit)),
        "batch_size": opts.batch_size,
        "max_length": opts.max_length,
        "chunk_size": opts.get("chunk_size"),
    }


def task_manager(include_path: str | None) -> Any:
    """lm-eval's TaskManager over its own tasks, memlab's suites and ``include_path``."""
    require_harness()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *([str(include_path)] if include_path else [])])


def check_task_names(manager: Any, names: list[str]) -> None:
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"lm_eval.tasks: unknown task {', '.join(unknown)} (not in lm-eval's tasks, memlab's "
            "suites recall/commonsense or lm_eval.include_path)"
        )


def run_harness(lm: Any, options: dict[str, Any], manager: Any, seed: int) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on ``lm``: its results dict, without the samples."""
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm,
        tasks=options["tasks"],
        num_fewshot=options["num_fewshot"],
        limit=options["limit"],
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``lm_eval/<task or group>/<metric>`` -> value, for every finite number in the results
    (lm-eval's ``<metric>,<filter>`` keys become ``<metric>`` for the default filter ``none``,
    else ``<metric>/<filter>``)."""
    out = {}
    for section in ("results", "groups"):
        for task, values in results.get(section, {}).items():
            for key, value in values.items():
                if "," not in key or isinstance(value, bool) or not isinstance(value, numbers.Real):
                    continue
                metric, filt = key.split(",", 1)
                name = metric if filt == "none" else f"{metric}/{filt}"
                if math.isfinite(value):
                    out[f"lm_eval/{task}/{name}"] = float(value)
    return out


def write_results(results: dict[str, Any], output_dir: Path) -> str:
    """lm_eval.json (the harness' results) and lm_eval.md (its tables); returns the tables."""
    from lm_eval.utils import make_table

    output_dir.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in results.items() if k not in ("samples",)}
    (output_dir / "lm_eval.json").write_text(json.dumps(kept, indent=1, default=str))
    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    (output_dir / "lm_eval.md").write_text(table)
    return table
