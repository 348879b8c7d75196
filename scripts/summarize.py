"""Print and write the comparison table + plot of a sweep folder (what a multirun does at its end).

python scripts/summarize.py logs/train/multiruns/2026-01-01_12-00-00 [--metric val/acc]
    [--best-lr] [--by-state-size [--group-by model]]

Several folders are read as one sweep (a study run in slices, one multirun per group of arms);
the summary goes to --out (default: the first folder):
python scripts/summarize.py <multirun A> <multirun B> --best-lr --by-state-size --out <folder>
"""

import argparse
import sys
from pathlib import Path

from memlab.utils.sweep_summary import write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir")
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
    parser.add_argument("--out", type=Path, help="where the summary goes (default: the first sweep_dir)")
    args = parser.parse_args()
    for folder in args.sweep_dirs:
        if not folder.is_dir():
            sys.exit(f"error: {folder} is not a folder")
    out = args.out or args.sweep_dirs[0]
    if out.exists() and not out.is_dir():
        sys.exit(f"error: --out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rows = write_summary(
        out, args.metric, args.best_lr, args.by_state_size, args.group_by, sources=args.sweep_dirs
    )
    if not rows:
        sys.exit(f"error: no finished jobs (*/metrics.json) under {' '.join(map(str, args.sweep_dirs))}")


if __name__ == "__main__":
    main()
