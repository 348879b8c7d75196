"""The corpus configs compose to the right Hub datasets, and data=text_files trains every model,
with and without cu_seqlens, through the real pipeline."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

pytest.importorskip("datasets")

from memlab.data.text import TextDataModule
from memlab.train import train

from ..conftest import CONFIG_DIR, compose_config
from .text_corpus import documents, write_jsonl, write_parquet

HUB = {
    "slimpajama": ("cerebras/SlimPajama-627B", None, "train", "validation", "test"),
    "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", None, None),
    "pg19": ("emozilla/pg19", None, "train", "validation", "test"),
}
# the small shape of every architecture (the paper shapes carry a size in their name)
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not any(c.isdigit() for c in p.stem))


@pytest.mark.parametrize("option", sorted(HUB))
def test_hub_configs_name_their_datasets(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"data={option}"], tmp_path / "run")
    dm = instantiate(cfg.data, _convert_="all")  # opens nothing: no download
    assert isinstance(dm, TextDataModule) and dm.files["train"] is None
    assert (dm.path, dm.name, *dm.splits.values()) == HUB[option]
    assert dm.tokenizer_spec == "bytes" and cfg.model.vocab_size == 257
    assert dm.cache_dir == Path(cfg.paths.data_dir) / "hf"


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    docs = documents(60)
    return [
        str(write_parquet(tmp_path / "a.parquet", docs[:40])),
        str(write_jsonl(tmp_path / "b.jsonl", docs[40:])),
    ]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("cu_seqlens", [False, True])
def test_text_batches_train_every_model(model: str, cu_seqlens: bool, corpus, tmp_path: Path) -> None:
    cfg = compose_config(
        ["data=text_files", f"model={model}", "model.d_model=32", "model.n_layers=1"], tmp_path / "run"
    )
    dm = TextDataModule(files=corpus, seq_len=24, batch_size=2, val_documents=4, cu_seqlens=cu_seqlens)
    dm.setup("fit")
    module = instantiate(cfg.module, net=instantiate(cfg.model, _convert_="all"), _convert_="all")
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert ("cu_seqlens" in batch) == cu_seqlens
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.net.embed.weight.grad.abs().sum() > 0
    if cu_seqlens:  # a packed batch scores each document as if it were alone
        losses = module._token_losses(batch)[0]
        cu = batch["cu_seqlens"].tolist()
        alone = [
            module._token_losses({k: batch[k][:, a:b] for k in ("input_ids", "labels")})[0]
            for a, b in itertools.pairwise(cu)
        ]
        torch.testing.assert_close(losses, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_text_files_run_through_the_pipeline(corpus, tmp_path: Path) -> None:
    overrides = [
        "data=text_files",
        f"data.files=[{','.join(corpus)}]",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.val_windows=4",
        "data.val_documents=6",
        "data.cu_seqlens=true",
        "model.d_model=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.accelerator=cpu",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "optimized_metric=val/loss",
        "extras.print_config=false",
    ]
    cfg = compose_config(overrides, tmp_path / "run")
    metrics = train(cfg)
    assert {"val/loss", "val/ppl", "test/loss", "train/loss", "perf/tokens_per_s"} <= set(metrics)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["TextDataModule"]["ranks"][0]["consumed"] == 4
