"""The streamed text pipeline on generated local files: tokenizers, packing, sharding over ranks and
workers (no token lost or duplicated), shuffling, cu_seqlens, held-out validation documents."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")

from memlab.data.text import ByteTokenizer, TextDataModule, load_tokenizer
from memlab.data.text.packing import Packer
from memlab.data.text.stream import STATE_KEY, DocumentStream, PackedStream, plan_slices

from .text_corpus import documents, write_jsonl, write_parquet

EOS = ByteTokenizer.eos_id


def encoded(doc: str) -> list[int]:
    return [*doc.encode("utf-8"), EOS]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[list[str], list[str]]:
    """83 documents over a parquet file of 4 row groups and a jsonl file: (docs, file paths)."""
    docs = documents(83)
    parquet = write_parquet(tmp_path / "a.parquet", docs[:60], row_group_size=16)
    jsonl = write_jsonl(tmp_path / "b.jsonl", docs[60:])
    return docs, [str(parquet), str(jsonl)]


def make_dm(files, **kwargs) -> TextDataModule:
    options = {"seq_len": 11, "batch_size": 3, "val_documents": 1, "shuffle_block": 4, **kwargs}
    dm = TextDataModule(files=files, **options)
    dm.setup("fit")
    return dm


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    (ids,) = tok.encode_batch(["héllo"])
    assert ids.dtype == np.int32 and ids.tolist() == list("héllo".encode())
    assert tok.decode([*ids.tolist(), EOS]) == "héllo" and tok.vocab_size == EOS + 1


def test_hf_tokenizer_from_a_local_file_or_folder(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        documents(50), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>", "<end>"])
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert loaded.eos_id == tok.token_to_id("<|endoftext|>") and loaded.vocab_size == tok.get_vocab_size()
    (ids,) = loaded.encode_batch(["<d0003>abc"])
    assert loaded.decode(ids).replace(" ", "") == "<d0003>abc"
    # a folder with a tokenizer_config.json naming its end-of-text token
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": {"content": "<end>"}}')
    assert load_tokenizer(str(tmp_path)).eos_id == tok.token_to_id("<end>")
    assert load_tokenizer(str(tmp_path), eos_token="<unk>").eos_id == tok.token_to_id("<unk>")


def test_packer_emits_every_token_once_in_order() -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 200, int(rng.integers(0, 30)), dtype=np.int32) for _ in range(40)]
    packer, runs = Packer(7, eos_id=255), []
    for i, doc in enumerate(docs):
        packer.add(i, doc)
        while packer.ready():
            runs.append(packer.take())
    stream = np.concatenate([np.append(d, 255) for d in docs])
    assert np.array_equal(np.concatenate([*runs, packer.leftover()]), stream)
    assert all(len(r) == 7 for r in runs) and len(packer.leftover()) < 7


def test_plan_slices_partitions_rows() -> None:
    for num_shards, streams in ((8, 4), (6, 4), (3, 4), (1, 2)):
        rows = {}
        for g in range(streams):
            for part in plan_slices(num_shards, g, streams, holdout=2):
                for r in range(part.first, 40, part.stride):
                    assert (part.shard, r) not in rows
                    rows[(part.shard, r)] = g
        expected = {(s, r) for s in range(num_shards) for r in range(2 if s == 0 else 0, 40)}
        assert set(rows) == expected


@pytest.mark.parametrize("row_group_size", [16, 100])
def test_two_ranks_two_workers_lose_and_duplicate_nothing(
    corpus, row_group_size: int, tmp_path: Path
) -> None:
    """2 ranks × 2 workers over one epoch: the four streams' documents are all the documents but the
    held-out one, once each; each stream's windows are exactly its documents' tokens in order (the
    tail shorter than a batch waits for the next epoch). Row groups of 16 give 5 shards >= 4 streams
    (whole shards per stream), one row group per file gives 2 < 4 (every 4th row per stream)."""
    docs, _ = corpus
    files = [
        str(write_parquet(tmp_path / "c.parquet", docs[:60], row_group_size)),
        str(write_jsonl(tmp_path / "d.jsonl", docs[60:])),
    ]
    dm = make_dm(files)
    seen: list[str] = []
    for rank in range(2):
        stream = PackedStream(
            dm.source("train"),
            dm.tokenizer,
            11,
            3,
            False,
            0,
            True,
            4,
            rank=rank,
            world_size=2,
            num_streams=2,
            holdout=1,
        )
        for local in range(2):
            g = rank * 2 + local
            slices = plan_slices(len(stream.source.shards), g, 4, holdout=1)
            stream_docs = [
                t for _, t in DocumentStream(stream.source, slices, g, 0, True, 4, epochs=1).documents()
            ]
            seen += stream_docs
            tokens = [tok for d in stream_docs for tok in encoded(d)]
            batches = list(stream.stream_batches(local, epochs=1))
            windows = [torch.cat([b["input_ids"], b["labels"][:, -1:]], 1) for b in batches]
            flat = torch.cat(windows).reshape(-1).tolist() if windows else []
            assert flat == tokens[: len(flat)] and len(tokens) - len(flat) < 3 * 12
            for b in batches:
                assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert sorted(seen) == sorted(docs[1:])  # docs[0] is the validation document


def test_packing_carries_over_epochs(corpus) -> None:
    docs, files = corpus
    dm = make_dm(files, shuffle=False)
    stream = PackedStream(dm.source("train"), dm.tokenizer, 11, 3, False, 0, False, 4, holdout=1)
    epoch = [tok for d in docs[1:] for tok in encoded(d)]
    batches = list(itertools.islice(stream.stream_batches(0), len(epoch) // 36 + 4))
    flat = (
        torch.cat([torch.cat([b["input_ids"], b["labels"][:, -1:]], 1) for b in batches]).reshape(-1).tolist()
    )
    assert flat == (epoch + epoch)[: len(flat)]


def test_resuming_from_any_batch_continues_the_stream(tmp_path: Path) -> None:
    """Each batch's saved position restarts its stream on exactly the batches that followed it,
    wherever it falls: mid-document, at a document's end, across shards, blocks and epochs."""
    docs = documents(14, seed=1)
    files = [
        str(write_parquet(tmp_path / "a.parquet", docs[:9], row_group_size=4)),
        str(write_jsonl(tmp_path / "b.jsonl", docs[9:], bad_lines=(2,))),
    ]
    dm = make_dm(files, seq_len=5, batch_size=2)

    def stream(local: int, state: dict[str, int] | None = None):
        states = None if state is None else {local: state}
        packed = PackedStream(
            dm.source("train"), dm.tokenizer, 5, 2, False, 0, True, 4, num_streams=2, holdout=1, states=states
        )
        return packed.stream_batches(local)

    for local in range(2):
        straight = list(itertools.islice(stream(local), 36))
        epochs = {b[STATE_KEY][1]["epoch"] for b in straight}
        assert epochs >= {0, 1}, epochs
        for k, batch in enumerate(straight[:-2]):
            resumed = list(itertools.islice(stream(local, batch[STATE_KEY][1]), 2))
            for a, b in zip(straight[k + 1 : k + 3], resumed, strict=True):
                assert torch.equal(a["input_ids"], b["input_ids"]), f"stream {local}, after batch {k}"
                assert a[STATE_KEY] == b[STATE_KEY]


def test_workers_serve_the_streams_in_turn(corpus) -> None:
    _, files = corpus
    dm = make_dm(files, num_workers=2)
    loaded = list(itertools.islice(iter(dm.train_dataloader()), 6))
    stream = PackedStream(
        dm.source("train"), dm.tokenizer, 11, 3, False, 0, True, 4, num_streams=2, holdout=1
    )
    direct = [list(itertools.islice(stream.stream_batches(s), 3)) for s in range(2)]
    for k, batch in enumerate(loaded):
        expected = direct[k % 2][k // 2]
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert batch[STATE_KEY][0] == k % 2 and dict(batch[STATE_KEY][1]) == expected[STATE_KEY][1]


def test_shuffle_follows_the_seed(corpus) -> None:
    _, files = corpus

    def first(seed: int, shuffle: bool = True) -> torch.Tensor:
        dm = make_dm(files, seed=seed, shuffle=shuffle)
        return next(iter(dm.train_dataloader()))["input_ids"]

    assert torch.equal(first(3), first(3))
    assert not torch.equal(first(3), first(4))
    assert not torch.equal(first(3), first(3, shuffle=False))


def test_cu_seqlens_mark_windows_and_documents(corpus) -> None:
    _, files = corpus
    dm = make_dm(files, cu_seqlens=True)
    batch = next(iter(dm.train_dataloader()))
    ids, cu = batch["input_ids"], batch["cu_seqlens"]
    assert ids.shape == (1, 3 * 11) and batch["labels"].shape == ids.shape and cu.dtype == torch.int32
    starts = {0, 11, 22} | {t + 1 for t in range(32) if ids[0, t] == EOS}
    assert cu.tolist() == [*sorted(starts), 33]


def test_validation_documents_are_held_out(corpus) -> None:
    _, files = corpus
    dm = make_dm(files, val_documents=2, val_windows=50, eval_batch_size=4)
    val = list(dm.val_dataloader())
    windows = [torch.cat([b["input_ids"], b["labels"][:, -1:]], 1).reshape(-1) for b in val]
    text = ByteTokenizer().decode(torch.cat(windows).tolist())  # drops the -100 of the padding
    assert re.findall(r"<d\d{4}>", text) == ["<d0000>", "<d0001>"]  # padded after them
    last = val[-1]["labels"][-1]
    assert (last == -100).any() and (last[: (last != -100).sum()] != -100).all()
    assert torch.equal(next(iter(dm.test_dataloader()))["input_ids"], val[0]["input_ids"])
    train = torch.cat([b["input_ids"].reshape(-1) for b in itertools.islice(iter(dm.train_dataloader()), 40)])
    assert not {"<d0000>", "<d0001>"} & set(re.findall(r"<d\d{4}>", ByteTokenizer().decode(train.tolist())))
