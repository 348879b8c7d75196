"""The benchmark suites ``scripts/bench.py`` runs.

A suite is a function ``run() -> (rows, table)`` that times its ops on the current CUDA
device: ``rows`` are JSON-serialisable dicts (written by ``--json``), ``table`` is the text
to print. Add one by importing its module here and naming it in SUITES.
"""

from __future__ import annotations

from collections.abc import Callable

from memlab.bench import (
    decode,
    decode_speed,
    gated_delta_rule,
    layers,
    lightning_step,
    loglikelihood,
    mom,
    prefill,
    selective_scan,
    small_step,
    train_step,
)

SUITES: dict[str, Callable[[], tuple[list[dict], str]]] = {
    "decode": decode.run,
    "decode_speed": decode_speed.run,
    "gated_delta_rule": gated_delta_rule.run,
    "layers": layers.run,
    "lightning_step": lightning_step.run,
    "loglikelihood": loglikelihood.run,
    "mom": mom.run,
    "prefill": prefill.run,
    "selective_scan": selective_scan.run,
    "small_step": small_step.run,
    "train_step": train_step.run,
}
