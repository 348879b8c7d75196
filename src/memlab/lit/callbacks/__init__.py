"""memlab's own Lightning callbacks."""

from memlab.lit.callbacks.exception_checkpoint import ExceptionCheckpoint
from memlab.lit.callbacks.layer_charts import LayerCharts
from memlab.lit.callbacks.nonfinite import NonFiniteGuard
from memlab.lit.callbacks.passkey_grid import PasskeyGrid
from memlab.lit.callbacks.step_checkpoint import StepCheckpoint
from memlab.lit.callbacks.throughput import TokenThroughput

__all__ = [
    "ExceptionCheckpoint",
    "LayerCharts",
    "NonFiniteGuard",
    "PasskeyGrid",
    "StepCheckpoint",
    "TokenThroughput",
]
