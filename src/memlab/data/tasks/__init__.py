"""Synthetic task generators: pure numpy, seeded by an explicit Generator, no torch."""

from memlab.data.tasks.mqar import IGNORE_INDEX, make_mqar

__all__ = ["IGNORE_INDEX", "make_mqar"]
