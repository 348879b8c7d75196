"""Print and write the comparison table + plot of a sweep folder (what a multirun does at its end).

python scripts/summarize.py logs/train/multiruns/2026-01-01_12-00-00 [--metric val/acc]
    [--best-lr] [--by-state-size [--group-by model]]
"""

import argparse
import sys
from pathlib import Path

from memlab.utils.sweep_summary import write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="val/acc", help="the metric listed first")
    parser.add_argument(
        "--best-lr",
        action="store_true",
        help="keep each arm at its best optimizer.lr by --metric (lower is better for losses)",
    )
    parser.add_argument(
        "--by-state-size",
        action="store_true",
        help="also plot --metric against model/state_size (summary_state_size.png)",
    )
    parser.add_argument(
        "--group-by",
        nargs="+",
        metavar="KEY",
        help="swept keys that make one line of that plot (default: the swept config groups)",
    )
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir} is not a folder")
    rows = write_summary(args.sweep_dir, args.metric, args.best_lr, args.by_state_size, args.group_by)
    if not rows:
        sys.exit(f"error: no finished jobs (*/metrics.json) under {args.sweep_dir}")


if __name__ == "__main__":
    main()
