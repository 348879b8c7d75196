"""One rank of a 2-process CPU run (gloo), started by tests/test_scale_out.py as torchrun or SLURM
start ranks (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set): for each case (DDP on MQAR and on a
text corpus, FSDP2 with activation checkpointing on MQAR), a tiny model trained to step 4, then
the same run resumed from its step-2 checkpoint.

    python -m tests.ddp_job ROOT TEXT_FILE...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from memlab.train import train
from tests.conftest import TINY, compose_config

COMMON = [
    # MEMLAB_TEST_ACCELERATOR=gpu runs the same cases on two GPUs (NCCL)
    f"trainer.accelerator={os.environ.get('MEMLAB_TEST_ACCELERATOR', 'cpu')}",
    "trainer.devices=2",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "+trainer.limit_val_batches=0",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "callbacks.learning_rate_monitor=null",
    "callbacks.layer_charts=null",
    "callbacks.throughput=null",
    "~logger",
    "test=false",
    "extras.print_config=false",
    "model.d_model=32",
    "model.n_layers=1",
]


def runs(files: list[str]) -> dict[str, list[str]]:
    """The overrides of each case: 2 loader workers per rank."""
    text = [
        "data=text_files",
        f"data.files=[{','.join(files)}]",
        "data.seq_len=16",
        "data.batch_size=2",
        "data.val_documents=2",
        "data.shuffle_block=3",
        "data.num_workers=2",
        "model=transformer",
        "model.mixer.num_heads=2",
    ]
    mqar = [*TINY, "data.num_workers=2"]
    return {
        "mqar": ["trainer.strategy=ddp", *mqar],
        "text": ["trainer.strategy=ddp", *text],
        "fsdp": ["trainer=fsdp", *mqar, "model.activation_checkpointing=every_block"],
    }


def main(root: Path, files: list[str]) -> None:
    for name, overrides in runs(files).items():
        base = [*overrides, *COMMON]
        train(compose_config(base, root / name / "straight"))
        ckpt = root / name / "straight" / "checkpoints" / "step_000002.ckpt"
        train(compose_config([*base, f"ckpt_path={ckpt}"], root / name / "resumed"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
