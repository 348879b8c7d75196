"""Small generated corpora for the text-pipeline tests: every document is tagged with its id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def documents(n: int, seed: int = 0, prefix: str = "d") -> list[str]:
    """n documents ``<prefix0007>`` + 1..40 random letters (some multi-byte): ids make each unique."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz é")
    return [f"<{prefix}{i:04d}>" + "".join(rng.choice(letters, int(rng.integers(1, 40)))) for i in range(n)]


def write_parquet(path: Path, docs: list[str], row_group_size: int = 16) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": docs, "id": list(range(len(docs)))}), path, row_group_size=row_group_size
    )
    return path


def write_jsonl(path: Path, docs: list[str], bad_lines: tuple[int, ...] = ()) -> Path:
    """One JSON object per line; the lines at ``bad_lines`` (0-based, among the output) are broken."""
    lines = [json.dumps({"text": d}) for d in docs]
    for i in sorted(bad_lines):
        lines.insert(i, '{"text": "unterminated')
    path.write_text("\n".join(lines) + "\n")
    return path
