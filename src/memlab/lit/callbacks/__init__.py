"""memlab's own Lightning callbacks."""

from memlab.lit.callbacks.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
