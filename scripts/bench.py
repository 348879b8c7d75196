"""Kernel and layer timings on the current GPU: prints one table per suite, optionally JSON.

    python scripts/bench.py [--suite NAME ...] [--json PATH]

Suites live in memlab.bench.suites (SUITES); each times its ops against their PyTorch twins.
The JSON holds every suite's rows under a stamp (GPU, commit, date, versions: see
memlab.bench.stamp); ``scripts/bench_page.py`` turns such files into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

import torch

from memlab.bench.cli import require_cuda
from memlab.bench.stamp import stamp, write_results
from memlab.bench.suites import SUITES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--json", help="write every suite's rows, stamped, to this file")
    args = parser.parse_args()
    require_cuda()
    here = stamp()
    print(f"{here['gpu']}, torch {torch.__version__}, commit {here['commit']}, {here['date']}")
    results = {}
    for name in args.suite:
        rows, table = SUITES[name]()
        results[name] = rows
        print(f"\n## {name}\n\n{table}", flush=True)
        if args.json:  # after every suite: a run cut short keeps the suites it finished
            write_results(args.json, results, here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
