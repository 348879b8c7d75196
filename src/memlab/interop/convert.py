"""Parameters between memlab's names and a target format's, by a format's table (formats.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from memlab.errors import ConfigError
from memlab.interop.table import Format, Param, Spec

# target tensors no memlab parameter corresponds to, which an import passes over: buffers older
# checkpoints saved
_IGNORED = ("rotary_emb.inv_freq",)


def _entries(param: Param, spec: Spec) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    """(memlab name, the target names per row) of each layer's copy of ``param``."""
    layers = range(spec["n_layers"]) if "{i}" in param.ours else [0]
    rows = param.theirs(spec) if callable(param.theirs) else [param.theirs]
    for i in layers:
        yield param.ours.format(i=i), [tuple(name.format(i=i) for name in row) for row in rows]


def _row_sizes(spec: Spec) -> list[int]:
    """How a MoM memory's projection splits: k [H·K], v [H·V], β [H], decay input [H]."""
    H, K = spec["mixer.num_heads"], spec["mixer.head_dim"]
    return [H * K, H * int(K * spec["mixer.expand_v"]), H, H]


def to_target(state: Mapping[str, torch.Tensor], spec: Spec, fmt: Format) -> dict[str, torch.Tensor]:
    """memlab's state dict -> the target's tensors (contiguous, the state's dtypes)."""
    out: dict[str, torch.Tensor] = {}
    covered = set()
    for param in fmt.params:
        for ours, rows in _entries(param, spec):
            if ours not in state:
                continue
            covered.add(ours)
            if ours == "lm_head.weight" and spec["tie_embeddings"]:
                continue  # tied: the file holds the embedding only
            t = state[ours]
            if param.kind == "same":
                out[rows[0][0]] = t
            elif param.kind == "cat":
                out.update(zip(rows[0], t.chunk(len(rows[0]), dim=0), strict=True))
            elif param.kind == "conv":
                out[rows[0][0]] = t[:, None, :]
            else:  # rows
                for m, row in enumerate(rows):
                    out.update(zip(row, t[m].T.split(_row_sizes(spec), dim=0), strict=True))
    left = sorted(set(state) - covered)
    if left:
        raise ConfigError(f"{fmt.target} has no place for memlab's {', '.join(left[:3])}")
    if fmt.zeros is not None:
        dtype = state["embed.weight"].dtype
        out.update({name: torch.zeros(shape, dtype=dtype) for name, shape in fmt.zeros(spec).items()})
    return {name: t.contiguous() for name, t in out.items()}


def from_target(
    tensors: Mapping[str, torch.Tensor], spec: Spec, fmt: Format, names: set[str], source: str
) -> dict[str, torch.Tensor]:
    """The target's tensors -> memlab's state dict for the parameter ``names`` of the network;
    ConfigError naming ``source`` for a missing tensor or one memlab has no place for."""
    state: dict[str, torch.Tensor] = {}
    used = set(fmt.zeros(spec)) if fmt.zeros is not None else set()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ConfigError(f"{source}: the checkpoint has no tensor {name}")
        used.add(name)
        return tensors[name]

    for param in fmt.params:
        for ours, rows in _entries(param, spec):
            if ours not in names:
                continue
            if ours == "lm_head.weight" and spec["tie_embeddings"]:
                used.add(rows[0][0])  # tied: the embedding, whether or not the file repeats it
                state[ours] = state["embed.weight"]
            elif param.kind == "same":
                state[ours] = take(rows[0][0])
            elif param.kind == "cat":
                state[ours] = torch.cat([take(name) for name in rows[0]], dim=0)
            elif param.kind == "conv":
                state[ours] = take(rows[0][0])[:, 0, :]
            else:  # rows
                state[ours] = torch.stack([torch.cat([take(n) for n in row], dim=0).T for row in rows])
    unused = sorted(n for n in set(tensors) - used if not n.endswith(_IGNORED))
    if unused:
        raise ConfigError(f"{source}: the checkpoint holds weights memlab has no place for: {unused[:3]}")
    return state
