"""memlab's own Lightning callbacks."""

from memlab.lit.callbacks.passkey_grid import PasskeyGrid
from memlab.lit.callbacks.throughput import TokenThroughput

__all__ = ["PasskeyGrid", "TokenThroughput"]
