"""Kernel and layer timings on the current GPU: prints one table per suite, optionally JSON.

    python scripts/bench.py [--suite NAME ...] [--json PATH]

Suites live in memlab.bench.suites (SUITES); each times its ops against their PyTorch twins.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from memlab.bench.cli import require_cuda
from memlab.bench.suites import SUITES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--json", help="write every suite's rows to this file")
    args = parser.parse_args()
    require_cuda()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = {}
    for name in args.suite:
        rows, table = SUITES[name]()
        results[name] = rows
        print(f"\n## {name}\n\n{table}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
