"""A few tiny cases of every family of the GPU conformance suite (tests/gpu), drawn from the
run's seed as there, run on the CPU under Triton's interpreter: the same draws, inputs and
comparisons, so the CPU suite also guards the shape logic of every op.

The tests marked ``interpreted`` run under TRITON_INTERPRET=1, started by
``test_conformance_under_interpreter`` (see tests/interpreter.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.conformance.check import report
from tests.conformance.draw import Draw, case_seed
from tests.conformance.ops import FAMILIES
from tests.interpreter import interpreted, run_under_interpreter

pytest.importorskip("triton")

CASES_PER_FAMILY = 2


def _params() -> list:
    seed = int(os.environ["MEMLAB_TEST_SEED"])
    params = []
    for name, family in FAMILIES.items():
        for i in range(CASES_PER_FAMILY):
            spec = family.draw(Draw(case_seed(seed, name, i), tiny=True))
            params.append(pytest.param(name, i, spec, id=f"{name}-{i}"))
    return params


@interpreted
@pytest.mark.parametrize(("family", "index", "spec"), _params())
def test_op_interpreted(family: str, index: int, spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMLAB_KERNEL_BACKEND", raising=False)
    torch.manual_seed(case_seed(int(os.environ["MEMLAB_TEST_SEED"]), family, index))
    print(spec)
    measures = FAMILIES[family].check(spec, "cpu")
    assert all(m.ok for m in measures), report(measures)


def test_conformance_under_interpreter() -> None:
    run_under_interpreter(__file__)
