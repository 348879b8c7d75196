"""Several projections of one input joined into one weight, so a decoding step runs one GEMV."""

from __future__ import annotations

import torch


class JoinedWeights:
    """A cached join of weights into rows [ΣN_i, D], for the decoding step: each weight is a
    projection [N_i, D] (nn.Linear's layout) or a stack of M input-major ones [M, D, N_i / M].

    At one token per sequence a projection is a GEMV whose time is mostly fixed cost, so a layer
    that projects its input several ways runs them as one. The join is a copy (memory: the
    weights joined), rebuilt whenever a source weight moves or is changed in place (its version
    counter); a write through ``.data``, which bypasses that counter, is not seen.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._joined: torch.Tensor | None = None

    def __call__(self, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
        """-> [ΣN_i, D] in ``dtype`` (the dtype the GEMV runs in, so it casts nothing per call)."""
        key = (dtype, *((w.data_ptr(), w._version, w.dtype, w.device, w.shape) for w in weights))
        if key != self._key:
            rows = [w if w.dim() == 2 else w.transpose(1, 2).flatten(0, 1) for w in weights]
            with torch.no_grad():
                self._joined = torch.cat(rows).to(dtype)
            self._key = key
        return self._joined

    def __getstate__(self) -> dict:
        return {"_key": None, "_joined": None}  # a copy of the model rebuilds it
