"""TensorBoard tags for the mixers' statistics (``LMOutput.stats``, one dict per layer), and the
charts that group them per layer."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

# Statistics of the router; every other name is a statistic of a memory pool (MemMamba's).
ROUTER_STATS = {"router_load": "load"}
# Tag groups (TensorBoard's first path component); both sort after `perf`, which leads.
ROUTER_GROUP = "router"
POOL_GROUP = "pool"
_ROUTER_LOAD = re.compile(rf"^{ROUTER_GROUP}/load/layer(\d+)/mem(\d+)$")
_POOL_STAT = re.compile(rf"^{POOL_GROUP}/[^/]+/layer(\d+)$")


def stat_tags(layer_stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{tag: scalar}: ``router/<stat>/layer<i>/mem<e>`` for a router statistic [num_memories],
    ``pool/<name>/layer<i>`` for a scalar one."""
    tags = {}
    for i, stats in enumerate(layer_stats):
        for name, value in stats.items():
            if name in ROUTER_STATS:
                tags |= {
                    f"{ROUTER_GROUP}/{ROUTER_STATS[name]}/layer{i}/mem{e}": v for e, v in enumerate(value)
                }
            else:
                tags[f"{POOL_GROUP}/{name}/layer{i}"] = value
    return tags


def is_stat_tag(tag: str) -> bool:
    return tag.startswith((f"{ROUTER_GROUP}/", f"{POOL_GROUP}/"))


def router_load_matrix(metrics: Mapping[str, torch.Tensor | float]) -> torch.Tensor | None:
    """The ``router/load/layer<i>/mem<e>`` entries of ``metrics`` as an fp32 [layers, memories]
    matrix (on the values' device), or None when there are none. Layers without a router
    (or missing memories) are NaN."""
    cells = {}
    for tag, value in metrics.items():
        if match := _ROUTER_LOAD.match(tag):
            cells[int(match[1]), int(match[2])] = torch.as_tensor(value, dtype=torch.float32)
    if not cells:
        return None
    layers, memories = (max(k[d] for k in cells) + 1 for d in (0, 1))
    values = torch.stack([cells[k] for k in sorted(cells)])
    if len(cells) == layers * memories:  # one stack, not a copy per cell (it runs every step)
        return values.view(layers, memories)
    out = torch.full((layers * memories,), float("nan"), device=values.device)
    out[[i * memories + e for i, e in sorted(cells)]] = values
    return out.view(layers, memories)


def layer_charts(tags: Iterable[str]) -> dict[str, dict[str, list]]:
    """A custom-scalar layout (``SummaryWriter.add_custom_scalars``) for the statistics among
    ``tags``: ``router load`` with one chart per layer (a line per memory), ``pool`` with one
    chart per layer (a line per statistic)."""
    layout = {}
    for category, pattern, regex in (
        ("router load", _ROUTER_LOAD, rf"^{ROUTER_GROUP}/load/layer{{}}/mem\d+$"),
        ("pool", _POOL_STAT, rf"^{POOL_GROUP}/[^/]+/layer{{}}$"),
    ):
        layers = sorted({int(m[1]) for tag in tags if (m := pattern.match(tag))})
        if layers:
            layout[category] = {f"layer {i}": ["Multiline", [regex.format(i)]] for i in layers}
    return layout
