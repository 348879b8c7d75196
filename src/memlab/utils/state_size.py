"""The state-size axis: how many elements of recurrent state a model keeps per sequence.

Every mixer reports ``state_size(context_length)`` (its recurrent memory; attention's KV cache
at that length) and ``LanguageModel.state_size`` sums them. A training run evaluates it at its
training length and logs it once as ``model/state_size`` (in metrics.json, and as a column of
TensorBoard's HPARAMS tab), so that sweep summaries can put a metric against it (Zoology's
recall-versus-state-size plots).
"""

from __future__ import annotations

from typing import Any

STATE_SIZE = "model/state_size"


def training_length(datamodule: Any) -> int | None:
    """The longest training sequence: ``seq_len`` of the text and passkey data, the longest of
    MQAR's ``train_segments``; None where the data module tells neither."""
    seq_len = getattr(datamodule, "seq_len", None)
    if isinstance(seq_len, int) and not isinstance(seq_len, bool):
        return seq_len
    segments = getattr(datamodule, "segments", None)
    if isinstance(segments, dict) and segments.get("train"):
        return max(int(spec.seq_len) for spec in segments["train"])
    return None


def state_size_metric(net: Any, datamodule: Any) -> dict[str, float]:
    """{"model/state_size": elements per sequence at the training length}, or {} for a network
    or data module that cannot tell it."""
    length = training_length(datamodule)
    if length is None or not hasattr(net, "state_size"):
        return {}
    return {STATE_SIZE: float(net.state_size(length))}
