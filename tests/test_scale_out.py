"""Scale-out on the CPU: exact resume across DDP ranks (2 processes, gloo), the trainer configs,
the requeue path of a SLURM job and the device each sweep job gets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning import Callback
from omegaconf import DictConfig

from memlab.data import MQARDataModule
from memlab.data.passkey import PasskeyDataModule
from memlab.errors import ConfigError, Terminated
from memlab.lit.fsdp import FSDP2Strategy
from memlab.models.block import Block
from memlab.train import train
from memlab.utils.devices import places, release_gpu, try_claim, visible_devices
from memlab.utils.instantiate import instantiate_group
from memlab.utils.requeue import requeued_checkpoint

from .conftest import CONFIG_DIR, ROOT, compose_config
from .data.text_corpus import documents, write_jsonl, write_parquet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(world_size: int, *args: str) -> list[subprocess.Popen]:
    """``python -m tests.ddp_job args`` once per rank, as torchrun or srun would start them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")])),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(world_size),
        NODE_RANK="0",
        OMP_NUM_THREADS="1",
    )
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ddp_job", *args],
            cwd=ROOT,
            env={**env, "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_at_step_k_across_ranks_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """2 ranks × 2 loader workers: DDP on MQAR and on a text corpus, FSDP2 on MQAR (bf16-mixed,
    every block recomputed in the backward). Resumed from step 2, each run ends with the weights
    of the run never stopped: every rank's streams continued exactly, and FSDP2's gathered
    checkpoint restored the shards. On a host with two GPUs, MEMLAB_TEST_ACCELERATOR=gpu runs
    the same on them."""
    pytest.importorskip("datasets")
    docs = documents(60)
    files = [
        str(write_parquet(tmp_path / "a.parquet", docs[:35], 8)),
        str(write_jsonl(tmp_path / "b.jsonl", docs[35:])),
    ]
    ranks = _start_ranks(2, str(tmp_path / "runs"), *files)
    try:
        outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    for rank, output in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, output[-4000:]
    for data in ("mqar", "text", "fsdp"):
        runs = tmp_path / "runs" / data
        state = torch.load(runs / "straight/checkpoints/step_000002.ckpt", weights_only=True)
        assert state["global_step"] == 2
        if data == "text":  # both ranks' positions, two streams each
            saved = state["TextDataModule"]["ranks"]
            assert [(r["consumed"], r["num_streams"]) for r in saved] == [(2, 2), (2, 2)]
            assert saved[0]["states"] != saved[1]["states"]
        want = _weights(runs / "straight/checkpoints/last.ckpt")
        got = _weights(runs / "resumed/checkpoints/last.ckpt")
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"{data}: {key}")


class SlurmRequeueAt(Callback):
    """What SLURM and Lightning do to a job requeued before its time limit, as step ``step + 1``
    starts: Lightning's handler of the requeue signal writes hpc_ckpt_1.ckpt and runs ``scontrol
    requeue`` (a stub here), then SLURM ends the job with SIGTERM."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)
            os.kill(os.getpid(), signal.SIGTERM)


def _adding(callback: Callback):
    """instantiate_group, with ``callback`` added to the callbacks."""

    def with_callback(group):
        objects = instantiate_group(group)
        return [*objects, callback] if group is not None and "model_checkpoint" in group else objects

    return with_callback


QUIET = [
    "model=transformer",
    "model.n_layers=1",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "test=false",
]


def test_a_requeued_job_resumes_from_its_own_folder(make_cfg, monkeypatch, tmp_path: Path) -> None:
    """The requeued job (same command, same folder, SLURM_RESTART_COUNT=1) passes over the
    on_exception.ckpt its kill cut short, resumes from Lightning's hpc checkpoint at step 1 and
    ends with the weights of a run never stopped; the hpc checkpoint is gone after its fit."""
    straight = make_cfg(QUIET, run="straight")
    train(straight)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/requeued"\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    job = make_cfg(QUIET, run="job")
    monkeypatch.setattr("memlab.train.instantiate_group", _adding(SlurmRequeueAt(1)))
    with pytest.raises(Terminated):
        train(job.copy())
    monkeypatch.setattr("memlab.train.instantiate_group", instantiate_group)
    assert (bin_dir / "requeued").read_text().split() == ["requeue", "4242"]
    folder = Path(job.paths.output_dir)
    hpc = folder / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 1
    killed = folder / "checkpoints" / "on_exception.ckpt"  # SIGTERM ends the job after step 2
    assert torch.load(killed, weights_only=True)["global_step"] == 2
    killed.write_bytes(killed.read_bytes()[:100])  # cut short by the kill
    assert requeued_checkpoint([folder]) is None  # a first attempt starts as configured

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint([folder / "checkpoints", folder]) == str(hpc)
    train(job.copy())
    assert not hpc.exists()
    want = _weights(Path(straight.paths.output_dir) / "checkpoints/last.ckpt")
    got = _weights(folder / "checkpoints/last.ckpt")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


def _hydra_config(overrides: list[str]) -> DictConfig:
    """The composed config with its ``hydra`` node, as a launcher sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_trainer_configs(monkeypatch, tmp_path: Path) -> None:
    """trainer=ddp spans the SLURM allocation's nodes; trainer=fsdp builds its FSDP2 strategy."""
    monkeypatch.setenv("SLURM_NNODES", "4")
    assert compose_config(["trainer=ddp"], tmp_path / "run").trainer.num_nodes == 4
    monkeypatch.delenv("SLURM_NNODES")
    cfg = compose_config(["trainer=fsdp", "trainer.strategy.param_dtype=bfloat16"], tmp_path / "run")
    assert cfg.trainer.num_nodes == 1 and cfg.trainer.precision == "bf16-mixed"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and strategy.wrap == (Block,)
    assert strategy.mp_policy.param_dtype == torch.bfloat16
    assert strategy.mp_policy.reduce_dtype == torch.float32
    with pytest.raises(ConfigError, match=r"trainer.strategy.param_dtype must be null or a floating dtype"):
        FSDP2Strategy(param_dtype="int8")


def test_slurm_launcher_asks_one_task_per_gpu_and_lightnings_requeue_signal(monkeypatch, tmp_path) -> None:
    """The sbatch script the submitit launcher writes (a stub srun stands for SLURM)."""
    submitit = pytest.importorskip("submitit")
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = _hydra_config(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=8",
            "hydra.launcher.timeout_min=600",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    executors = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, *args: executors.append(self) or [])
    launcher.launch([["seed=1"]], 0)
    script = executors[0]._executor._make_submission_file_text("python job.py", "0")
    for line in (
        "--partition=gpu",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--time=600",
        "--signal=USR1@120",
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in script


def test_gpu_places_spread_over_the_gpus_and_are_held_per_process(tmp_path: Path) -> None:
    assert places(["0", "1", "2"], 2) == [("0", 0), ("1", 0), ("2", 0), ("0", 1), ("1", 1), ("2", 1)]
    held = [try_claim(["0", "1"], 2, tmp_path) for _ in range(4)]
    assert [h[:2] for h in held] == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    assert try_claim(["0", "1"], 2, tmp_path) is None  # a fifth job waits
    held[1][2].close()  # the process of the first job on GPU 1 ended
    again = try_claim(["0", "1"], 2, tmp_path)
    assert again is not None and again[:2] == ("1", 0)
    for handle in [*held, again]:
        handle[2].close()


def test_gpu_pool_sizes_the_pool_and_gives_each_job_a_gpu(monkeypatch, tmp_path: Path) -> None:
    """hydra/launcher=gpu_pool on a host showing GPUs 4 and 6, two jobs per GPU: 4 jobs at a time,
    and the job process sees one GPU only."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setattr("memlab.utils.devices.lock_dir", lambda: tmp_path)
    cfg = _hydra_config(["hydra/launcher=gpu_pool", "hydra.callbacks.gpu_pool.jobs_per_gpu=2"])
    pool = instantiate(cfg.hydra.callbacks.gpu_pool)
    pool.on_multirun_start(config=cfg)
    assert cfg.hydra.launcher.n_jobs == 4
    assert visible_devices(lambda: 8) == ["4", "6"]
    try:
        pool.on_job_start(config=cfg)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        pool.on_job_start(config=cfg)  # the next job of the same process stays on its GPU
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    finally:
        release_gpu()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices(lambda: 3) == ["0", "1", "2"]


SEGMENTS = [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 32}]
TASKS = {
    "mqar": lambda **kw: MQARDataModule(16, SEGMENTS, SEGMENTS, batch_size=4, **kw),
    "passkey": lambda **kw: PasskeyDataModule(16, seq_len=32, batch_size=4, **kw),
}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize(
    "world_size,change,needle",
    [(1, {}, None), (2, {}, "same world size"), (1, {"seed": 1}, "data.seed=0")],
)
def test_generated_tasks_refuse_another_world_size_or_other_data(task, world_size, change, needle) -> None:
    """MQAR and passkey keep their position with the world size and the settings of their order."""
    saved = TASKS[task]()
    saved.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=2, world_size=1, global_rank=0)
    dm = TASKS[task](**change)
    dm.load_state_dict(saved.state_dict())
    dm.trainer = SimpleNamespace(
        global_step=3, accumulate_grad_batches=2, world_size=world_size, global_rank=0
    )
    if needle is None:
        stream = dm.train_dataloader().dataset
        assert getattr(stream, "sampler", stream).start_batch == 6
        return
    with pytest.raises(ConfigError, match=needle):
        dm.train_dataloader()
