"""Write docs/benchmarks.md from stamped benchmark JSON files: a table per suite and file.

    python scripts/bench_page.py [FILE.json ...] [--out PATH]

Without files it reads docs/benchmarks/*.json; each file is what ``scripts/bench.py --json``
writes (see memlab.bench.stamp). Needs no GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memlab.bench.page import PageError, load, render

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="benchmark JSON files (default: docs/benchmarks/*.json)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the page to write")
    args = parser.parse_args(argv)
    files = args.files or sorted(str(p) for p in (ROOT / "docs" / "benchmarks").glob("*.json"))
    if not files:
        print("error: no benchmark JSON files given and none in docs/benchmarks/", file=sys.stderr)
        return 2
    try:
        page = render([load(f) for f in files], ROOT)
    except PageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(page)
    print(f"wrote {args.out} from {len(files)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
