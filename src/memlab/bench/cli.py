"""What the suites' command lines share: checks of their arguments and of the device, made
before any work so that a mistake ends in one line, not a traceback."""

from __future__ import annotations

import argparse
import sys

import torch


def positive_int(text: str) -> int:
    """argparse ``type`` for sizes and counts: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def require_cuda() -> None:
    """Exit with status 2 and one line on stderr when there is no CUDA device."""
    if not torch.cuda.is_available():
        print("error: no CUDA device; the benchmarks time GPU kernels", file=sys.stderr)
        sys.exit(2)


def parse_suite_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """A suite's own command line: ``parser``'s arguments and ``--json PATH`` (where to save the
    rows), parsed; then ``require_cuda``, so that a mistake in either ends before any work."""
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    require_cuda()
    return args
