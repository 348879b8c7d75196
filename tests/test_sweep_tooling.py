"""The sweep and tracking tooling: the MQAR state-size study and memmamba_vs_mamba compose into
valid jobs, a tiny state study ends with its plot and table (sweep folder and TensorBoard), the
Optuna lr search, early stopping, and the W&B / MLflow loggers in their offline modes."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from memlab.train import optimized_value, train
from memlab.utils.hparams import log_hparams
from memlab.utils.instantiate import instantiate_group
from memlab.utils.preflight import check_training_config
from memlab.utils.state_size import STATE_SIZE
from memlab.utils.sweep_axes import state_size_lines
from memlab.utils.sweep_summary import collect, summarize

from .conftest import CONFIG_DIR, TINY, compose_config

ARMS = ["mom4", "mom8", "gdn", "mamba", "memmamba", "transformer"]
HEAD_SIZES = [16, 32, 64]
LRS = ["1e-4", "4.64e-4", "2.15e-3", "1e-2"]
QUIET = ["callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
# multirun jobs as cheap as can still make a table: the recurrent arms' PyTorch twins loop over
# sequences, and the Trainer's own callbacks cost more than two steps
CHEAP = [
    "data.batch_size=2",
    "data.val_segments=[{seq_len:32,num_kv_pairs:4,num_examples:8}]",
    "test=false",
    *(f"callbacks.{name}=null" for name in ("model_checkpoint", "layer_charts", "learning_rate_monitor")),
]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        return False


needs = {
    name: pytest.mark.skipif(not _installed(module), reason=f'needs {name}: pip install -e ".[sweeps]"')
    for name, module in (
        ("optuna", "hydra_plugins.hydra_optuna_sweeper"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher"),
    )
}


def _jobs(experiment: str) -> tuple[list[dict[str, str]], DictConfig]:
    """The jobs the experiment's multirun launches, each as {key: value} of its overrides (as
    Hydra's basic sweeper splits them), and the experiment's config with its `hydra` node."""
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra.compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return [dict(o.split("=", 1) for o in job) for job in batch], cfg


@needs["joblib"]
def test_state_study_runs_every_arm_at_every_state_and_lr() -> None:
    jobs, cfg = _jobs("mqar_state_study")
    assert len(jobs) == len(ARMS) * len(HEAD_SIZES) * len(LRS) * 2
    swept = {key: {job[key] for job in jobs} for key in jobs[0]}
    assert swept == {
        "arm": set(ARMS),
        "head_size": {str(h) for h in HEAD_SIZES},
        "seed": {"0", "1"},
        "optimizer.lr": {str(float(lr)) for lr in LRS},
    }
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs > 1
    summary = cfg.hydra.callbacks.sweep_summary
    assert summary.best_lr and summary.by_state_size and list(summary.group_by) == ["arm"]
    assert cfg.optimized_metric == "val/acc" and cfg.callbacks.early_stopping.stopping_threshold == 0.99
    # a diverging lr skips steps instead of failing the sweep before its summary
    assert cfg.callbacks.nonfinite.max_skips == cfg.trainer.max_steps
    assert [s.seq_len for s in cfg.data.train_segments] == [256] * 3
    assert [s.num_kv_pairs for s in cfg.data.train_segments] == [16, 32, 64]


@pytest.mark.parametrize("arm", ARMS)
@needs["joblib"]
def test_every_state_study_job_passes_the_schemas(arm: str, tmp_path: Path) -> None:
    """Each arm at each head size and lr: the start-up checks (typed schemas of model, optimizer,
    scheduler) pass, the network builds, and its state grows with the head size."""
    cfg = compose_config(["experiment=mqar_state_study", f"arm={arm}"], tmp_path / "run")
    sizes = []
    for head_size in HEAD_SIZES:
        for lr in LRS:
            with open_dict(cfg):
                cfg.head_size, cfg.optimizer.lr = head_size, float(lr)
            check_training_config(cfg)
        with torch.device("meta"):
            sizes.append(instantiate(cfg.model, _convert_="all").state_size(256))
    assert sizes == sorted(set(sizes)), sizes


def test_memmamba_vs_mamba_arms(tmp_path: Path) -> None:
    """Passkey to 32x the training length, 4 seeds; MemMamba, Mamba, and MemMamba with a larger
    pool and without cross-layer attention."""
    jobs, cfg = _jobs("memmamba_vs_mamba")
    arms = ["memmamba", "mamba", "memmamba_pool200", "memmamba_no_cross_layer"]
    assert len(jobs) == 16 and {job["arm"] for job in jobs} == set(arms)
    assert {job["seed"] for job in jobs} == {"0", "1", "2", "3"}
    assert max(cfg.callbacks.passkey_grid.length_multiples) == 32
    mixers = {}
    for arm in arms:
        run = compose_config(["experiment=memmamba_vs_mamba", f"arm={arm}"], tmp_path / arm)
        check_training_config(run)
        mixers[arm] = OmegaConf.to_container(run.model.mixer, resolve=True)
    assert mixers["mamba"]["_target_"].endswith(".Mamba") and mixers["mamba"]["d_state"] == 16
    base = mixers["memmamba"]
    assert (base["pool_size"], base["cross_layer_period"], base["backbone"]["d_state"]) == (50, 4, 16)
    assert mixers["memmamba_pool200"] == {**base, "pool_size": 200}
    assert mixers["memmamba_no_cross_layer"] == {**base, "cross_layer_period": 0}


def _multirun(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/train.py -m ARGS`` in this process: no interpreter to start, the jobs alone cost."""

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def main(cfg):
        return optimized_value(train(cfg), cfg.get("optimized_metric"))

    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none", *QUIET]
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", *TINY, *quiet, *CHEAP, *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


def test_tiny_state_study_ends_with_its_plot_and_table(tmp_path: Path, monkeypatch) -> None:
    """Two arms at two head sizes, one lr and seed, two steps each (each job stopped early at its
    first validation): the table and the plot against the state size, one line per arm, in the
    sweep folder and in TensorBoard (the best-lr choice: tests/test_sweep_summary.py)."""
    sweep = tmp_path / "sweep"
    args = ["experiment=mqar_state_study", "hydra/launcher=basic", f"hydra.sweep.dir={sweep}"]
    args += [f"paths.log_dir={tmp_path}", "arm=gdn,transformer", "head_size=8,16", "optimizer.lr=1e-3"]
    args += ["seed=0", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1"]
    # every accuracy passes -1: each job stops at its first validation, after 2 of its 4 steps
    _multirun([*args, "callbacks.early_stopping.stopping_threshold=-1"], monkeypatch)

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["arm"] for r in rows] == [
        f"arm={a},head_size={h}" for a in ("gdn", "transformer") for h in (8, 16)
    ]
    assert all(r["seeds"] == "1" for r in rows)
    assert float(rows[0][STATE_SIZE]) < float(rows[1][STATE_SIZE])
    assert state_size_lines(collect(sweep), summarize(collect(sweep), [STATE_SIZE]), ["arm"]).keys() == {
        "arm=gdn",
        "arm=transformer",
    }
    assert (sweep / "summary_state_size.png").stat().st_size > 0
    table = (sweep / "summary.md").read_text()
    assert table.startswith("| arm | seeds | val/acc |") and len(table.splitlines()) == 6

    summary = EventAccumulator(str(sweep / "summary"))
    summary.Reload()
    assert set(summary.Tags()["images"]) == {"summary/summary", "summary/summary_state_size"}
    (text,) = summary.Tensors("summary/table")
    assert text.tensor_proto.string_val[0].decode() == table
    arm = EventAccumulator(str(sweep / "arm=gdn,head_size=8,seed=0,lr=0.001"))
    arm.Reload()
    assert [e.step for e in arm.Scalars("train/loss")][-1] == 1  # steps 0 and 1: stopped at 2 of 4
    # HPARAMS: the swept arm and head size first, the arm by its option's name
    content = {
        k: plugin_data_pb2.HParamsPluginData.FromString(v)
        for k, v in arm.PluginTagToContent("hparams").items()
    }
    infos = content["_hparams_/experiment"].experiment.hparam_infos
    assert [i.name for i in infos[:2]] == ["arm", "head_size"]
    hparams = content["_hparams_/session_start_info"].session_start_info.hparams
    assert (hparams["arm"].string_value, hparams["head_size"].number_value) == ("gdn", 8)


def test_early_stopping_stops_at_the_threshold_or_without_progress(tmp_path: Path) -> None:
    cfg = compose_config(["callbacks=[default,early_stopping]"], tmp_path / "run")
    make = lambda **kw: instantiate({**OmegaConf.to_container(cfg.callbacks.early_stopping), **kw})  # noqa: E731
    stop = make()
    assert (stop.monitor, stop.mode, stop._check_on_train_epoch_end) == ("val/acc", "max", False)
    assert not stop._evaluate_stopping_criteria(torch.tensor(0.99))[0]
    assert stop._evaluate_stopping_criteria(torch.tensor(0.995))[0]  # past Zoology's 0.99
    stale = make(patience=2)
    stops = [stale._evaluate_stopping_criteria(torch.tensor(acc))[0] for acc in (0.3, 0.5, 0.5, 0.4)]
    assert stops == [False, False, False, True]  # two validations without a gain


@needs["optuna"]
def test_optuna_searches_the_learning_rate(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config(["hparams_search=mqar_lr_optuna"], tmp_path / "run")
    assert cfg.optimized_metric == "val/acc"
    sweep = tmp_path / "sweep"
    args = ["hparams_search=mqar_lr_optuna", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}"]
    args += [f"paths.log_dir={tmp_path}", "model=gdn", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    _multirun(args, monkeypatch)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    lr = result["best_params"]["optimizer.lr"]
    assert 1e-4 <= lr <= 1e-2 and 0.0 <= result["best_value"] <= 1.0
    overrides = yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text())
    assert f"optimizer.lr={lr}" in overrides
    (row,) = csv.DictReader((sweep / "summary.csv").open())
    assert float(row["val/acc"]) == pytest.approx(result["best_value"])


def test_loggers_other_than_tensorboard_get_the_config_and_final_metrics(make_cfg) -> None:
    cfg = make_cfg(["logger=csv"])
    (logger,) = instantiate_group(cfg.logger)
    log_hparams(logger, cfg, {"val/acc": 0.5}, failed=False)
    logger.save()
    folder = Path(logger.log_dir)
    assert yaml.safe_load((folder / "hparams.yaml").read_text())["model.d_model"] == 32
    (row,) = csv.DictReader((folder / "metrics.csv").open())
    assert float(row["final/val/acc"]) == 0.5


TRACKERS = [name for name in ("wandb", "mlflow") if _installed(name)]


@pytest.mark.skipif(
    not TRACKERS, reason='needs wandb or mlflow (pip install -e ".[wandb]" / ".[mlflow]"), not in dev'
)
def test_wandb_offline_and_mlflow_local_store(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """One tiny run logged by every installed tracker, offline: a W&B offline run folder, a local
    MLflow store with the run's hyper-parameters and final metrics."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        f"logger=[{','.join(TRACKERS)}]",
        *QUIET,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]
    cfg = make_cfg([*overrides, *(["logger.wandb.offline=true"] if "wandb" in TRACKERS else [])])
    try:
        metrics = train(cfg)
    finally:
        if "wandb" in TRACKERS:
            import wandb

            wandb.finish()
            wandb.teardown()  # its service process
    run_dir = Path(cfg.paths.output_dir)
    if "wandb" in TRACKERS:
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        assert list(offline.glob("run-*.wandb"))
    if "mlflow" in TRACKERS:
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        experiment = client.get_experiment_by_name(cfg.run_name)
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["model.d_model"] == "32"
        assert run.data.metrics["final/val/acc"] == pytest.approx(metrics["val/acc"])
