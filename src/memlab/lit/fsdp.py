"""Fully sharded data parallelism (FSDP2) for ``trainer=fsdp``: Lightning's ModelParallelStrategy
with every rank in one data-parallel group, the network sharded block by block."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from memlab.errors import ConfigError


def _dtype(key: str, name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"trainer.strategy.{key} must be null or a floating dtype such as bfloat16 (got {name!r})"
        )
    return dtype


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) over all ranks of all nodes.

    Parameters, gradients and optimizer state are split across the ranks: each module of the
    ``wrap`` classes (memlab's ``Block``) is one sharded unit, gathered for its forward and its
    backward only, and the root unit holds the rest (embeddings, final norm, tied head). The
    LightningModule's ``configure_model`` hands its network to :meth:`shard`.

    Args:
        wrap: the module classes sharded as units (classes, or their import paths).
        param_dtype: the dtype parameters are gathered and computed in (None: as stored, fp32;
            ``bfloat16`` halves the gather traffic). Lightning's ``bf16-mixed`` precision
            autocasts the computation either way.
        reduce_dtype: the dtype gradients are reduced in (None: as computed).
        reshard_after_forward: free a unit's gathered parameters after its forward (ZeRO-3)
            rather than keeping them for the backward (ZeRO-2: less traffic, more memory).
        save_distributed_checkpoint: False writes one file (gathered on rank 0), which memlab's
            resume, evaluation and generation read; True writes a folder of per-rank shards.
        **kwargs: for ``ModelParallelStrategy`` (``process_group_backend``, ``timeout``).
    """

    def __init__(
        self,
        wrap: Sequence[type[nn.Module] | str] = ("memlab.models.block.Block",),
        param_dtype: str | None = None,
        reduce_dtype: str | None = "float32",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.wrap = tuple(_module_class(c) for c in wrap)
        self.mp_policy = MixedPrecisionPolicy(
            param_dtype=_dtype("param_dtype", param_dtype), reduce_dtype=_dtype("reduce_dtype", reduce_dtype)
        )
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # one data-parallel group of every process (the parent's "auto" would make it one per node)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard(self, net: nn.Module) -> None:
        """Shard ``net`` in place: every ``wrap`` module, then the root; a sharded net is left as it is."""
        if isinstance(net, FSDPModule):
            return
        mesh = self.device_mesh["data_parallel"]
        options = {"mesh": mesh, "mp_policy": self.mp_policy}
        for module in net.modules():
            if isinstance(module, self.wrap) and module is not net:
                fully_shard(module, reshard_after_forward=self.reshard_after_forward, **options)
        # the root's parameters are needed again at once by the backward: keep them gathered
        fully_shard(net, reshard_after_forward=False, **options)


def _module_class(spec: type[nn.Module] | str) -> type[nn.Module]:
    """A class, or the class an import path ``package.module.Class`` names."""
    if isinstance(spec, type):
        return spec
    module, _, name = str(spec).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"trainer.strategy.wrap: {spec!r} is not an importable torch.nn.Module class")
    return cls
