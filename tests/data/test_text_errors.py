"""A missing, empty or corrupt corpus, dataset or tokenizer is one readable line naming what and
where; a malformed jsonl line is skipped and counted, not fatal."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from memlab.data.text import TextDataModule, load_tokenizer
from memlab.errors import ConfigError
from memlab.utils.user_errors import one_line, user_error

from ..cli import error_line, run_cli
from .text_corpus import documents, write_jsonl, write_parquet


def setup_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        TextDataModule(**kwargs).setup("fit")
    return str(info.value)


def test_local_file_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "junk.jsonl").write_text("not json\n[1, 2]\n")
    (tmp_path / "doc.csv").write_text("a,b\n")
    write_parquet(tmp_path / "other_column.parquet", ["x"])
    cases = {
        "empty.txt": "is empty",
        "bad.parquet": "not a readable parquet file",
        "latin1.txt": "not UTF-8 text",
        "junk.jsonl": "none of its first lines is a JSON object",
        "doc.csv": "unsupported type",
        "missing.txt": "no such file",
        "nothing*.txt": "matches no file",
    }
    for name, needle in cases.items():
        message = setup_error(files=[str(tmp_path / name)])
        assert needle in message and name in message and message.startswith("data.files: "), message
    assert "no column 'body'" in setup_error(
        files=[str(tmp_path / "other_column.parquet")], text_field="body"
    )


def test_tokenizer_and_dataset_errors(tmp_path: Path) -> None:
    for spec, needle in (("/no/such/tokenizer.json", "no such file"), (str(tmp_path), "no tokenizer.json")):
        with pytest.raises(ConfigError, match=needle):
            load_tokenizer(spec)
    assert "no such local dataset folder" in setup_error(path="./no/such/dataset")
    message = setup_error(files=[str(write_jsonl(tmp_path / "a.jsonl", ["x"]))], vocab_size=100)
    assert "data.vocab_size=100" in message and "257" in message


def test_unknown_hub_dataset_is_one_line(monkeypatch) -> None:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def missing(path, *args, **kwargs):
        raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    assert "data.path=nobody/nothing: no such dataset on the Hugging Face Hub" in setup_error(
        path="nobody/nothing"
    )


def test_malformed_jsonl_lines_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    docs = documents(10)
    path = write_jsonl(tmp_path / "a.jsonl", docs, bad_lines=(2, 7))
    dm = TextDataModule(files=[str(path)], seq_len=7, batch_size=1, val_documents=1, shuffle=False)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="memlab.data.text.sources"):
        texts = [t for _, t in dm.source("train").rows(0) if t]
    assert texts == docs
    assert (
        f"{path}: skipped malformed line 3" in caplog.text
        and f"{path}: skipped 2 malformed lines" in caplog.text
    )


def test_an_error_inside_a_loader_worker_is_one_line(tmp_path: Path) -> None:
    """Every document held out for validation leaves the training streams empty: the worker's
    ConfigError, re-raised by the DataLoader with its traceback, is still reported as one line."""
    path = write_parquet(tmp_path / "a.parquet", documents(3))
    dm = TextDataModule(files=[str(path)], val_documents=5, num_workers=1)
    dm.setup("fit")
    with pytest.raises(ConfigError) as info:
        next(itertools.islice(iter(dm.train_dataloader()), 1, None))
    assert one_line(user_error(info.value)) == (
        "data: stream 0 of 1 local files has no documents (fewer rows than ranks × data.num_workers, "
        "or all held out by data.val_documents?)"
    )


def test_unreachable_hub_is_one_line(monkeypatch) -> None:
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = setup_error(path="HuggingFaceFW/fineweb-edu", name="sample-10BT")
    assert message.startswith(
        "data.path=HuggingFaceFW/fineweb-edu (data.name=sample-10BT): cannot reach the Hugging Face Hub"
    )
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer=some-org/some-tokenizer: cannot reach the Hugging Face Hub"
    ):
        load_tokenizer("some-org/some-tokenizer")


def _lines_with_bad_byte_at(path: Path, offset: int) -> Path:
    """A .txt file of 100-byte lines whose first byte that is not UTF-8 is at ``offset``."""
    line = "a" * 99 + "\n"
    path.write_bytes((line * (offset // 100)).encode() + b"\xff\xfe bad\n" + (line * 3).encode())
    return path


def test_bad_utf8_past_the_first_64_kib_is_refused_at_start_up(tmp_path: Path) -> None:
    path = _lines_with_bad_byte_at(tmp_path / "big.txt", 70_000)
    message = setup_error(files=[str(path)], sample_by="line")
    assert message == f"data.files: {path}: not UTF-8 text at byte 70000 (line 701)"


def _read_error(dm: TextDataModule) -> str:
    """The one line a training stream's read failure becomes, raised in a loader worker."""
    dm.setup("fit")
    with pytest.raises(ConfigError) as info:
        for _ in dm.train_dataloader():
            pass
    return one_line(user_error(info.value))


def test_bad_utf8_found_while_reading_is_one_line_naming_file_and_byte(tmp_path: Path, monkeypatch) -> None:
    """Past the bytes checked at start-up (a large corpus), the reader's failure names the byte."""
    import memlab.data.text.sources as sources

    monkeypatch.setattr(sources, "_CHECKED_BYTES", 1 << 16)
    path = _lines_with_bad_byte_at(tmp_path / "big.txt", 70_000)
    dm = TextDataModule(files=[str(path)], sample_by="line", seq_len=16, val_documents=1, num_workers=1)
    assert _read_error(dm) == f"data.files: {path}: not UTF-8 text at byte 70000 (line 701)"


def _corrupt_parquet(path: Path) -> Path:
    """200 documents in row groups of 50, the pages of row group 2 overwritten; the footer stays
    intact, so the file opens and passes the start-up checks."""
    import pyarrow.parquet as pq

    write_parquet(path, documents(200), row_group_size=50)
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    data = bytearray(path.read_bytes())
    start = column.dictionary_page_offset or column.data_page_offset
    data[start + 20 : start + 220] = b"\xff" * 200
    path.write_bytes(bytes(data))
    return path


def test_a_corrupt_parquet_page_is_one_line_naming_file_and_row_group(tmp_path: Path) -> None:
    path = _corrupt_parquet(tmp_path / "a.parquet")
    dm = TextDataModule(files=[str(path)], seq_len=16, val_documents=1, num_workers=1, shuffle=False)
    line = _read_error(dm)
    assert line.startswith(f"data.files: {path}: row group 2 (rows 100-149) cannot be read"), line
    assert "Corrupt snappy compressed data" in line


def test_a_training_run_on_a_corrupt_file_ends_with_one_line(tmp_path: Path) -> None:
    """Through scripts/train.py: the worker's failure, re-raised by the DataLoader inside fit."""
    path = _corrupt_parquet(tmp_path / "a.parquet")
    res = run_cli(
        "data=text_files",
        f"data.files=[{path}]",
        "data.num_workers=1",
        "data.seq_len=16",
        "data.batch_size=2",
        "data.val_documents=1",
        "data.shuffle=false",
        "model.d_model=32",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.accelerator=cpu",
        "test=false",
        "extras.print_config=false",
        f"paths.log_dir={tmp_path}",
    )
    assert res.returncode == 2
    assert error_line(res).startswith(f"error: data.files: {path}: row group 2 (rows 100-149) cannot be read")
