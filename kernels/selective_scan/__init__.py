"""Mamba-1 selective scan: the full-sequence scan, its one-step decode form, and the
token-by-token reference used as ground truth in tests."""

from memlab.kernels.selective_scan.naive import naive_selective_scan
from memlab.kernels.selective_scan.scan import selective_scan
from memlab.kernels.selective_scan.state_update import selective_state_update

__all__ = ["naive_selective_scan", "selective_scan", "selective_state_update"]
