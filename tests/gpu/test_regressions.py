"""Shapes that once failed on a GPU, kept as fixed cases of the conformance checks."""

from __future__ import annotations

import pytest
import torch

from tests.conformance.check import report
from tests.conformance.layers import MOM
from tests.conformance.ops import GDN_CHUNK

GDN = {"H": 1, "h0": False, "gates": "mixed", "l2norm_in_kernel": False}
L2 = {"l2norm_in_kernel": True}


@pytest.mark.parametrize(
    "spec",
    [
        # Head size 16 in fp32 killed the process with an illegal memory access.
        GDN | {"dtype": "fp32", "K": 16, "V": 48, "B": 3, "T": 129},
        GDN | {"dtype": "fp32", "K": 16, "V": 32, "B": 3, "T": 129},
        GDN | {"dtype": "fp32", "K": 16, "V": 32, "B": 1, "T": 129, "docs": [0, 1, 1, 64, 129]},
        # In bf16, K or V of 1 read out of bounds (intra_dv at K = 1, dqkw at V = 1), and K = 1
        # missed the initial state's gradient by 5 %.
        GDN | {"dtype": "bf16", "K": 1, "V": 16, "B": 3, "T": 129, "h0": True},
        GDN | {"dtype": "bf16", "K": 8, "V": 1, "B": 3, "T": 129, "h0": True},
        GDN | {"dtype": "bf16", "K": 1, "V": 1, "B": 3, "T": 129, "h0": True},
        # Open (500 cases at seed 20261206, H100, Triton 3.6): wrong in the forward pass (one
        # chunk, so the prepare or output kernel) in fp16 with K of 40 or 48 and V of 16 or 32;
        # wrong in bf16 at K = 64, V = 24; wrong dk and dbeta only at fp16 K = 48, V = 32.
        GDN | {"dtype": "fp16", "K": 48, "V": 32, "H": 2, "B": 1, "T": 63, "gates": "uniform"},
        GDN | {"dtype": "fp16", "K": 40, "V": 16, "H": 8, "B": 1, "T": 63},
        GDN | {"dtype": "fp16", "K": 40, "V": 32, "H": 7, "B": 3, "T": 127, "gates": "uniform"},
        GDN | {"dtype": "bf16", "K": 64, "V": 24, "H": 5, "B": 2, "T": 454, "h0": True} | L2,
        GDN | {"dtype": "fp16", "K": 48, "V": 32, "B": 3, "T": 15, "h0": True, "gates": "zero"},
        # Open: illegal memory access in the backward's state pass (fp16, K = 64, V = 32), and
        # CUDA errors that ended the worker (16-bit, K of 40 to 64 with V of 16 or 24).
        GDN | {"dtype": "fp16", "K": 64, "V": 32, "H": 5, "B": 2, "T": 1000, "gates": "uniform"},
        GDN | {"dtype": "fp16", "K": 48, "V": 16, "H": 5, "B": 2, "T": 359, "h0": True},
        GDN | {"dtype": "bf16", "K": 48, "V": 24, "H": 6, "B": 3, "T": 2, "gates": "strong"},
        GDN | {"dtype": "bf16", "K": 64, "V": 16, "B": 3, "T": 1, "gates": "strong"} | L2,
    ],
    ids=lambda spec: ",".join(f"{k}={v}" for k, v in spec.items()).replace(" ", ""),
)
def test_gated_delta_rule(spec: dict) -> None:
    torch.manual_seed(0)
    measures = GDN_CHUNK.check(spec, "cuda")
    assert all(m.ok for m in measures), report(measures)


def test_mom_with_small_heads() -> None:
    """Heads under 16 in fp32: the chunked op returned a slice of its padded output, which
    MoM's packed path could not view as [tokens, H·V]."""
    spec = {"dtype": "fp32", "d_model": 16, "num_heads": 2, "head_dim": 8, "expand_v": 1}
    spec |= {"num_memories": 2, "topk": 2, "shared_mem": True, "conv_size": 2, "empty_memory": False}
    torch.manual_seed(0)
    measures = MOM.check(spec | {"B": 1, "T": 17}, "cuda")
    assert all(m.ok for m in measures), report(measures)
