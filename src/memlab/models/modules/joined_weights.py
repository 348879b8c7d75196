"""Several projections of one input joined into one weight, so a decoding step runs one GEMV."""

from __future__ import annotations

import torch


class JoinedWeights:
    """A cached join of weights into rows [ΣN_i, D], for the decoding step: each weight is a
    projection [N_i, D] (nn.Linear's layout) or a stack of M input-major ones [M, D, N_i / M].

    At one token a projection is a GEMV whose time is mostly fixed cost, so a layer that
    projects its input several ways runs them as one. The join is a copy (memory: the weights
    joined). ``__call__`` rebuilds it when a source moves or is changed in place as autograd
    sees it (its version counter); fused optimizers and writes through ``.data`` bypass that
    counter, so decoding calls ``refresh`` before each generation. A rebuild of the same shape
    writes into the same tensor: a CUDA graph that read it reads the new weights on replay.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._joined: torch.Tensor | None = None

    def __call__(self, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
        """-> [ΣN_i, D] in ``dtype`` (the dtype the GEMV runs in, so it casts nothing per call)."""
        if torch.compiler.is_compiling() and self._joined is not None and self._joined.dtype == dtype:
            # a compiled step reads the join as ``refresh`` left it (decoding refreshes it before
            # each generation): the key's pointers and version counters are not traceable
            return self._joined
        if _key(dtype, weights) != self._key:
            self.refresh(dtype, *weights)
        return self._joined

    def refresh(self, dtype: torch.dtype, *weights: torch.Tensor) -> None:
        """Rebuild the join from the weights as they are now."""
        rows = [w if w.dim() == 2 else w.transpose(1, 2).flatten(0, 1) for w in weights]
        shape = (sum(r.shape[0] for r in rows), rows[0].shape[1])
        old = self._joined
        with torch.no_grad():
            if old is None or old.shape != shape or old.dtype != dtype or old.device != rows[0].device:
                old = self._joined = torch.empty(shape, dtype=dtype, device=rows[0].device)
            torch.cat([r.to(dtype) for r in rows], out=old)
        self._key = _key(dtype, weights)

    def clear(self) -> None:
        self._key = self._joined = None

    def __getstate__(self) -> dict:
        return {"_key": None, "_joined": None}  # a copy of the model rebuilds it


def _key(dtype: torch.dtype, weights: tuple[torch.Tensor, ...]) -> tuple:
    # inference-mode tensors keep no version counter
    return (
        dtype,
        *(
            (w.data_ptr(), -1 if w.is_inference() else w._version, w.dtype, w.device, w.shape)
            for w in weights
        ),
    )
