"""Scale-out on the CPU: exact resume across DDP ranks (2 processes, gloo), the trainer configs,
the requeue path of a SLURM job and the device each sweep job gets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT
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


def test_ddp_resume_at_step_k_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """2 ranks × 2 loader workers, MQAR and a text corpus: resumed from step 3, the run ends with
    the weights of the run that was never stopped (each rank's streams continued exactly)."""
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
    for data in ("mqar", "text"):
        runs = tmp_path / "runs" / data
        state = torch.load(runs / "straight/checkpoints/step_000003.ckpt", weights_only=True)
        assert state["global_step"] == 3
        if data == "text":  # both ranks' positions, two streams each
            saved = state["TextDataModule"]["ranks"]
            assert [(r["consumed"], r["num_streams"]) for r in saved] == [(3, 2), (3, 2)]
            assert saved[0]["states"] != saved[1]["states"]
        want = _weights(runs / "straight/checkpoints/last.ckpt")
        got = _weights(runs / "resumed/checkpoints/last.ckpt")
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"{data}: {key}")
