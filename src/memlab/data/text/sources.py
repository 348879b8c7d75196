"""Where documents come from: a Hub dataset or local files, opened as ``datasets`` streams.

A source is a list of shards (a file, a parquet row group, or a Hub data file); each shard is
read in order, row by row, so a reader can start at any row of any shard, which is what exact
resume needs. Nothing is read when a source is opened apart from the checks of local files.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memlab.data.text.read_errors import bad_utf8_message, first_bad_utf8, first_line, unreadable_row_group
from memlab.errors import ConfigError

log = logging.getLogger(__name__)

# File extension -> (datasets builder, how rows become documents).
_FORMATS = {".parquet": ("parquet", "record"), ".jsonl": ("text", "json"), ".txt": ("text", "text")}
# Malformed JSON lines reported one by one per shard before only the end-of-shard count is.
_REPORTED_LINES = 3
# Rows decoded per read; the rows of a batch before a resume position are decoded and dropped.
_READ_BATCH = 256
# Bytes of local text files checked whole for UTF-8 at start-up (about a quarter of a second);
# past them only each file's first 64 KiB is, and a later decoding error names its file and byte.
_CHECKED_BYTES = 1 << 28
_HEAD_BYTES = 1 << 16
# What a reader raises on a file it cannot decode (UnicodeDecodeError and ArrowInvalid are ValueErrors).
_READ_ERRORS = (OSError, ValueError)


@dataclass(frozen=True)
class _Part:
    """One opened ``datasets`` stream and how to turn its rows into document strings."""

    dataset: Any
    kind: str  # "record": the text column of each row; "json": parse the line first; "text": the row
    label: str  # file or dataset name, for messages
    where: str  # the setting it comes from and its name: "data.files: a.txt", "data.path=org/name"
    file: Path | None = None  # a local file


class DocumentSource:
    """Documents (strings) of one split, as shards that can be read from any row.

    Build with :func:`open_hub` or :func:`open_files`. ``shards[i]`` is ``(part, shard index
    inside that part's stream)``; ``rows(i, start, stride)`` yields ``(row, document)`` for rows
    ``start, start + stride, ...`` of shard i. A row that is not a document (a malformed JSON
    line, a record without the text field) yields ``None`` so that row numbers stay exact.
    """

    def __init__(self, parts: Sequence[_Part], text_field: str, description: str) -> None:
        self.parts = list(parts)
        self.text_field = text_field
        self.description = description
        self.shards = [(p, i) for p, part in enumerate(self.parts) for i in range(part.dataset.num_shards)]

    def resharded(self, minimum: int, keep_first: bool = False) -> DocumentSource:
        """The same documents over more shards (parquet row groups) if there are fewer than
        ``minimum`` and ``datasets`` can split them (``reshard``); streams that outnumber the shards
        share them row by row instead, which is as exact but reads every row in every stream.
        ``keep_first`` leaves the first part whole, so that its first rows stay its first shard's."""
        if len(self.shards) >= minimum:
            return self
        parts = [
            p
            if (keep_first and i == 0) or not hasattr(p.dataset, "reshard")
            else _Part(p.dataset.reshard(), p.kind, p.label, p.where, p.file)
            for i, p in enumerate(self.parts)
        ]
        return DocumentSource(parts, self.text_field, self.description)

    def rows(self, shard: int, start: int = 0, stride: int = 1) -> Iterator[tuple[int, str | None]]:
        part_index, index = self.shards[shard]
        part = self.parts[part_index]
        stream = part.dataset.shard(num_shards=part.dataset.num_shards, index=index)
        # Column batches through `iter`, which (unlike iterating the dataset) reads the shard whole
        # inside a DataLoader worker instead of splitting it once more between the workers.
        column = "text" if part.kind != "record" else self.text_field
        records = (text for batch in stream.iter(batch_size=_READ_BATCH) for text in batch[column])
        malformed = 0
        for row, value in itertools.islice(enumerate(self._read(part, index, records)), start, None, stride):
            text = self._document(part, value)
            if text is None:
                malformed += 1
                if malformed <= _REPORTED_LINES:
                    log.warning(
                        "%s: skipped malformed line %d (no JSON object with a string %r)",
                        part.label,
                        row + 1,
                        self.text_field,
                    )
            yield row, text
        if malformed:
            log.warning("%s: skipped %d malformed lines", part.label, malformed)

    def _read(self, part: _Part, index: int, records: Iterator[Any]) -> Iterator[Any]:
        """``records``, with a failure to read them (a corrupt page, bytes that are not UTF-8, a
        lost connection) turned into a ConfigError naming the file and where it fails."""
        row = 0
        while True:
            try:
                value = next(records)
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                raise ConfigError(f"{part.where}: {self._failure(part, index, row, exc)}") from exc
            yield value
            row += 1

    def _failure(self, part: _Part, index: int, row: int, exc: BaseException) -> str:
        if part.file is not None and part.kind == "record":
            found = unreadable_row_group(part.file, self.text_field)
            if found:
                return found
        elif part.file is not None:
            offset = first_bad_utf8(part.file)
            if offset is not None:
                return bad_utf8_message(part.file, offset)
        return f"reading row {row} of shard {index} failed ({first_line(exc)})"

    def _document(self, part: _Part, value: Any) -> str | None:
        if part.kind != "json":
            return value if isinstance(value, str) else None
        if not value.strip():
            return ""
        try:
            record = json.loads(value)
        except ValueError:
            return None
        text = record.get(self.text_field) if isinstance(record, dict) else None
        return text if isinstance(text, str) else None


def open_hub(
    path: str, name: str | None, split: str, revision: str | None, text_field: str, cache_dir: Path | None
) -> DocumentSource:
    """A split of a Hub dataset (or a local dataset folder) as a stream; any failure is a ConfigError."""
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    where = f"data.path={path}" + (f" (data.name={name})" if name else "")
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise ConfigError(f"{where}: no such local dataset folder")
    try:
        dataset = datasets.load_dataset(
            path, name, split=split, revision=revision, streaming=True, cache_dir=_str(cache_dir)
        )
    except DatasetNotFoundError as exc:
        raise ConfigError(f"{where}: no such dataset on the Hugging Face Hub (or it is private)") from exc
    except DataFilesNotFoundError as exc:
        raise ConfigError(f"{where}: the dataset has no data files ({exc})") from exc
    except ConnectionError as exc:
        raise ConfigError(f"{where}: cannot reach the Hugging Face Hub ({first_line(exc)})") from exc
    except ValueError as exc:
        # unknown config or split names come as ValueError, naming the valid ones
        raise ConfigError(f"{where}, split={split}: {first_line(exc)}") from exc
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open the dataset ({first_line(exc)})") from exc
    features = getattr(dataset, "features", None)
    if features is not None and text_field not in features:
        raise ConfigError(
            f"{where}: no column {text_field!r} (columns: {', '.join(features)}); set data.text_field"
        )
    return DocumentSource([_Part(dataset, "record", path, where)], text_field, f"{path}:{split}")


def open_files(patterns: Sequence[str] | str, key: str, text_field: str, sample_by: str) -> DocumentSource:
    """Local ``.txt`` / ``.jsonl`` / ``.parquet`` files (paths or globs, sorted) as a stream.

    A ``.txt`` file is one document per file (``sample_by=document``), per blank-line
    separated paragraph (``paragraph``) or per line (``line``). Missing, empty, unreadable
    or corrupt files are ConfigErrors naming the file; a malformed JSON line is not (it is
    skipped and counted when read).
    """
    import datasets

    files = resolve_files(patterns, key)
    by_format: dict[str, list[str]] = {}
    unchecked = _CHECKED_BYTES
    for file in files:
        whole = file.stat().st_size <= unchecked
        unchecked -= file.stat().st_size if whole else 0
        check_file(file, key, text_field, whole)
        by_format.setdefault(file.suffix, []).append(str(file))
    parts = []
    for suffix, group in by_format.items():
        builder, kind = _FORMATS[suffix]
        # one stream per file, so a shard is always one file (or a row group of one)
        for file in group:
            options = {"sample_by": sample_by} if kind == "text" else {}
            stream = datasets.load_dataset(
                builder, data_files=[file], split="train", streaming=True, **options
            )
            parts.append(_Part(stream, kind, file, f"data.{key}: {file}", Path(file)))
    return DocumentSource(parts, text_field, f"{len(files)} local files")


def resolve_files(patterns: Sequence[str] | str, key: str) -> list[Path]:
    """Expand paths and globs into a sorted, de-duplicated list of supported files."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ConfigError(f"data.{key}: expected a path, a glob or a list of them (got nothing)")
    files: list[Path] = []
    for pattern in patterns:
        pattern = str(Path(str(pattern)).expanduser())
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if not Path(m).is_dir()]
        if not matches:
            raise ConfigError(f"data.{key}: {pattern} matches no file")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise ConfigError(f"data.{key}: {path}: no such file")
            if path.suffix not in _FORMATS:
                raise ConfigError(f"data.{key}: {path}: unsupported type (use {', '.join(_FORMATS)})")
            files.append(path)
    return sorted(set(files))


def check_file(path: Path, key: str, text_field: str, whole: bool = True) -> None:
    """Fail early, in the main process, on a file a reader would choke on: an empty one, a parquet
    file whose footer or schema is unreadable, a text file that is not UTF-8 (``whole``: all of it,
    else its first 64 KiB)."""
    if path.stat().st_size == 0:
        raise ConfigError(f"data.{key}: {path} is empty")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.ParquetFile(path).schema_arrow
        except Exception as exc:
            raise ConfigError(
                f"data.{key}: {path} is not a readable parquet file ({first_line(exc)})"
            ) from exc
        if text_field not in schema.names:
            raise ConfigError(
                f"data.{key}: {path} has no column {text_field!r} (columns: {', '.join(schema.names)})"
            )
        return
    offset = first_bad_utf8(path, None if whole else _HEAD_BYTES)
    if offset is not None:
        raise ConfigError(f"data.{key}: {path}: {bad_utf8_message(path, offset)}")
    if path.suffix == ".jsonl" and not _has_json_document(path, text_field):
        raise ConfigError(
            f"data.{key}: {path}: none of its first lines is a JSON object with a string {text_field!r}"
        )


def _has_json_document(path: Path, text_field: str, lines: int = 100) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in itertools.islice(f, lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get(text_field), str):
                return True
    return False


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
