"""TensorBoard tags for the mixers' statistics (``LMOutput.stats``, one dict per layer)."""

from __future__ import annotations

import torch

# Statistics of the router; every other name is a memory statistic (MemMamba's pool).
ROUTER_STATS = {"router_load": "load"}


def stat_tags(layer_stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{tag: scalar}: ``router/<stat>/layer<i>/mem<e>`` for a router statistic [num_memories],
    ``memory/<name>/layer<i>`` for a scalar one."""
    tags = {}
    for i, stats in enumerate(layer_stats):
        for name, value in stats.items():
            if name in ROUTER_STATS:
                tags |= {f"router/{ROUTER_STATS[name]}/layer{i}/mem{e}": v for e, v in enumerate(value)}
            else:
                tags[f"memory/{name}/layer{i}"] = value
    return tags
