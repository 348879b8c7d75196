"""Exact resume of the text stream through a real Lightning Trainer: a run resumed from its step-k
checkpoint trains on exactly the batches the uninterrupted run trained on after step k."""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

pytest.importorskip("datasets")

from memlab.data.text import TextDataModule
from memlab.errors import ConfigError
from memlab.lit import CausalLMModule
from memlab.lit.optim import warmup_cosine_schedule
from memlab.models import LanguageModel
from memlab.models.layers import Attention

from .text_corpus import documents, write_jsonl, write_parquet


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.module: CausalLMModule | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["input_ids"].clone())


def fit(
    files: list[str],
    workers: int,
    root: Path,
    max_steps: int,
    ckpt: str | None = None,
    extra: Sequence[Callback] = (),
    **data,
) -> RecordBatches:
    """Train a 1-layer attention LM on ``files`` (a checkpoint every 3 steps under ``root``); the
    recorder holds the batches trained on and, once fit returns, the trained module."""
    torch.manual_seed(0)
    dm = TextDataModule(
        files=files, seq_len=16, batch_size=2, val_documents=2, shuffle_block=3, num_workers=workers, **data
    )
    net = LanguageModel(257, 16, 1, functools.partial(Attention, num_heads=2))
    record = RecordBatches()
    every = ModelCheckpoint(dirpath=root, filename="step_{step}", every_n_train_steps=3, save_top_k=-1)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record, every, *extra],
        default_root_dir=root,
    )
    record.module = CausalLMModule(net, scheduler=functools.partial(warmup_cosine_schedule, warmup_steps=1))
    trainer.fit(record.module, datamodule=dm, ckpt_path=ckpt)
    return record


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    docs = documents(40)
    return [
        str(write_parquet(tmp_path / "a.parquet", docs[:25], 8)),
        str(write_jsonl(tmp_path / "b.jsonl", docs[25:])),
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_step_k_yields_the_uninterrupted_batches(files, workers: int, tmp_path: Path) -> None:
    straight = fit(files, workers, tmp_path / "straight", max_steps=8)
    assert len(straight.batches) == 8
    ckpt = tmp_path / "straight" / "step_step=3.ckpt"
    state = torch.load(ckpt, weights_only=True)["TextDataModule"]["ranks"][0]
    assert state["consumed"] == 3 and state["num_streams"] == max(1, workers)
    resumed = fit(files, workers, tmp_path / "resumed", max_steps=8, ckpt=str(ckpt))
    assert len(resumed.batches) == 5
    for k, (a, b) in enumerate(zip(straight.batches[3:], resumed.batches, strict=True)):
        assert torch.equal(a, b), f"batch {3 + k} differs"
    # a resumed run of a resumed run continues the same way (states of all streams were kept)
    again = fit(
        files, workers, tmp_path / "again", max_steps=8, ckpt=str(tmp_path / "resumed" / "step_step=6.ckpt")
    )
    assert all(torch.equal(a, b) for a, b in zip(straight.batches[6:], again.batches, strict=True))


def test_resume_refuses_another_worker_count(files, tmp_path: Path) -> None:
    fit(files, 0, tmp_path / "run", max_steps=3, cu_seqlens=True)
    state = torch.load(tmp_path / "run" / "step_step=3.ckpt", weights_only=True)["TextDataModule"]
    dm = TextDataModule(files=files, seq_len=16, batch_size=2, val_documents=2, num_workers=2)
    dm.load_state_dict(state)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"same world size and data.num_workers"):
        dm.train_dataloader()


class InterruptAt(Callback):
    """Ctrl-C in the middle of a step, once its batch was taken from the loader."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_from_on_exception_equals_uninterrupted(files, tmp_path: Path) -> None:
    """Interrupted in step 5: Lightning's on_exception.ckpt holds step 4 and the data position
    after batch 4; resumed from it, the run trains on the same batches to the same weights."""
    straight = fit(files, 2, tmp_path / "straight", max_steps=8)
    cut = tmp_path / "cut"
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning exits after a KeyboardInterrupt ...
            fit(files, 2, cut, max_steps=8, extra=[InterruptAt(4), OnExceptionCheckpoint(cut)])
    finally:
        signal.signal(signal.SIGINT, sigint)  # ... and ignores Ctrl-C from then on
    ckpt = torch.load(cut / "on_exception.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["TextDataModule"]["ranks"][0]["consumed"] == 4
    resumed = fit(files, 2, tmp_path / "resumed", max_steps=8, ckpt=str(cut / "on_exception.ckpt"))
    assert len(resumed.batches) == 4
    for k, (a, b) in enumerate(zip(straight.batches[4:], resumed.batches, strict=True)):
        assert torch.equal(a, b), f"batch {4 + k} differs"
    want, got = straight.module.state_dict(), resumed.module.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"files": "first"}, "data.files"),
        ({"workers": 2}, "data.num_workers"),
        ({"seed": 1}, "data.seed"),
    ],
)
def test_resume_refuses_a_changed_stream(files, change: dict, needle: str, tmp_path: Path) -> None:
    """The saved positions index the files and streams of the run that wrote them."""
    fit(files, 0, tmp_path / "run", max_steps=3)
    ckpt = str(tmp_path / "run" / "step_step=3.ckpt")
    workers = change.pop("workers", 0)
    resumed_files = files[:1] if change.pop("files", None) else files
    with pytest.raises(ConfigError, match=needle):
        fit(resumed_files, workers, tmp_path / "resumed", max_steps=4, ckpt=ckpt, **change)
    assert not list((tmp_path / "resumed").glob("*.ckpt"))
