"""Where a local corpus file stops being readable: the first byte of a text file that is not UTF-8,
the first row group of a parquet file that does not decode. Used to check files at start-up and to
name the position when a read fails later, deep inside a stream."""

from __future__ import annotations

import codecs
from pathlib import Path

_CHUNK = 1 << 20


def first_bad_utf8(path: Path, limit: int | None = None) -> int | None:
    """The offset of the first byte that is not UTF-8 among the first ``limit`` bytes of ``path``
    (all of them for None), else None. A multi-byte character cut at the limit is not an error."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = path.stat().st_size
    end = size if limit is None else min(limit, size)
    done = 0
    with path.open("rb") as f:
        while done < end:
            chunk = f.read(min(_CHUNK, end - done))
            if not chunk:
                break
            # bytes of a character cut at the previous chunk's end, which exc.start counts from
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=done + len(chunk) == size)
            except UnicodeDecodeError as exc:
                return done - held + exc.start
            done += len(chunk)
    return None


def line_of(path: Path, offset: int) -> int:
    """The 1-based line of ``path`` that byte ``offset`` is on."""
    lines, done = 1, 0
    with path.open("rb") as f:
        while done < offset:
            chunk = f.read(min(_CHUNK, offset - done))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            done += len(chunk)
    return lines


def bad_utf8_message(path: Path, offset: int) -> str:
    return f"not UTF-8 text at byte {offset} (line {line_of(path, offset)})"


def unreadable_row_group(path: Path, column: str) -> str | None:
    """``row group i (rows a-b) cannot be read (reason)`` for the first row group of a parquet file
    whose ``column`` does not decode, else None."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    first = 0
    for i in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(i).num_rows
        try:
            parquet.read_row_group(i, columns=[column])
        except Exception as exc:
            return f"row group {i} (rows {first}-{first + rows - 1}) cannot be read ({first_line(exc)})"
        first += rows
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
