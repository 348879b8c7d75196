"""Print and write the comparison table + plot of a sweep folder (what a multirun does at its end).

python scripts/summarize.py logs/train/multiruns/2026-01-01_12-00-00 [--metric val/acc]
"""

import argparse
import sys
from pathlib import Path

from memlab.utils.sweep_summary import write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="val/acc", help="the metric listed first")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir} is not a folder")
    if not write_summary(args.sweep_dir, args.metric):
        sys.exit(f"error: no finished jobs (*/metrics.json) under {args.sweep_dir}")


if __name__ == "__main__":
    main()
