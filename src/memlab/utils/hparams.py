"""Hyper-parameters for TensorBoard's HPARAMS tab: the keys a sweep varies first, then a few that
say what was trained; the final metrics are the runs' own scalars (no copies)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from memlab.lit.stat_tags import is_stat_tag
from memlab.utils.run_names import multirun_arm
from memlab.utils.state_size import STATE_SIZE

# groups that say where and how a run is logged rather than what it trains
SKIPPED_GROUPS = ("hydra", "paths", "extras", "callbacks", "logger")
# after the swept keys: the model and data configs' names, size, optimisation, length, seed
CURATED = (
    "model",
    "data",
    "model.d_model",
    "model.n_layers",
    "data.batch_size",
    "optimizer.lr",
    "trainer.max_steps",
    "seed",
)
# metric columns: evaluation first, then training, then speed
_METRIC_ORDER = ("val/", "test/", "train/", "perf/")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """{"model.d_model": 128, "optimizer.lr": 0.003, ...}: scalar leaves as they are, anything else
    (None, lists, empty dicts) as its string."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif isinstance(value, bool | int | float | str):
                out[name] = value
            else:
                out[name] = str(value)

    walk({k: v for k, v in tree.items() if k not in SKIPPED_GROUPS}, "")
    return out


def session_hparams(cfg: DictConfig, swept: Iterable[str], choices: Mapping[str, str]) -> dict[str, Any]:
    """The HPARAMS columns of a run: the ``swept`` keys, then CURATED (those the config has).
    ``choices`` are the config groups' selected options ({"model": "mom", ...})."""
    values = flat_hparams(cfg) | {group: str(option) for group, option in choices.items()}
    keys = dict.fromkeys([*swept, *CURATED])
    return {key: values[key] for key in keys if key in values}


def metric_columns(names: Iterable[str]) -> list[str]:
    """The HPARAMS metric columns among logged metric names: not the per-layer statistics."""

    def rank(name: str) -> tuple[int, str]:
        group = next((i for i, p in enumerate(_METRIC_ORDER) if name.startswith(p)), len(_METRIC_ORDER))
        return group, name

    return sorted((n for n in names if not is_stat_tag(n)), key=rank)


def write_hparams(
    logger: TensorBoardLogger,
    hparams: Mapping[str, Any],
    swept: Iterable[str],
    metrics: list[str],
    failed: bool,
) -> None:
    """Write the run's HPARAMS session: its hyper-parameters (swept ones flagged as differing, so
    TensorBoard puts them first) and the scalar tags whose last values are its metrics."""
    swept = set(swept)
    kinds = {bool: api_pb2.DATA_TYPE_BOOL, int: api_pb2.DATA_TYPE_FLOAT64, float: api_pb2.DATA_TYPE_FLOAT64}
    infos = [
        api_pb2.HParamInfo(name=k, type=kinds.get(type(v), api_pb2.DATA_TYPE_STRING), differs=k in swept)
        for k, v in hparams.items()
    ]
    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    start = plugin_data_pb2.SessionStartInfo()
    for key, value in hparams.items():
        start.hparams[key].CopyFrom(_value(value))
    writer = logger.experiment._get_file_writer()
    for tag, content in (
        (
            metadata.EXPERIMENT_TAG,
            {"experiment": api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)},
        ),
        (metadata.SESSION_START_INFO_TAG, {"session_start_info": start}),
        (metadata.SESSION_END_INFO_TAG, {"session_end_info": plugin_data_pb2.SessionEndInfo(status=status)}),
    ):
        data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
        writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
        )
    writer.flush()


def _value(value: Any) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


def log_hparams(logger: Logger, cfg: DictConfig, metrics: dict[str, float], failed: bool) -> None:
    """The run's hyper-parameters with its final metrics: for TensorBoard its HPARAMS session
    (all flattened keys still go to hparams.yaml); other loggers (CSV, W&B, MLflow) get every
    flattened key and the metrics as ``final/<metric>``."""
    if not isinstance(logger, TensorBoardLogger):
        # their log_hyperparams takes no metrics (TensorBoard's alone does)
        logger.log_hyperparams(flat_hparams(cfg))
        logger.log_metrics({f"final/{k}": v for k, v in metrics.items()})
        return
    logger.log_hyperparams(flat_hparams(cfg))
    arm = multirun_arm()
    swept = list(arm.swept) if arm else []
    choices = {}
    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime.choices
        # a swept config group (arm=gdn,mom4) is a column of its own, by its option's name
        choices = {g: runtime[g] for g in ("model", "data", *swept) if runtime.get(g) is not None}
    # the state size describes the model: a hyper-parameter column, not a scalar's
    hparams = session_hparams(cfg, swept, choices) | {k: v for k, v in metrics.items() if k == STATE_SIZE}
    columns = [m for m in metric_columns(metrics) if m != STATE_SIZE]
    write_hparams(logger, hparams, swept, columns, failed)
