"""Every kernel op on random shapes, fast path (Triton, poisoned buffers) and PyTorch twin,
each against an fp64 reference: outputs and the gradients of every input."""

from __future__ import annotations

import pytest
import torch

from tests.conformance.check import report
from tests.conformance.draw import case_seed
from tests.conformance.ops import FAMILIES
from tests.gpu.conftest import case_params, run_seed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        per_family = metafunc.config.getoption("conformance_cases") if torch.cuda.is_available() else 1
        metafunc.parametrize("case", case_params(metafunc.config, FAMILIES, per_family))


def test_op(case: tuple[str, int, dict], record) -> None:
    family, index, spec = case
    torch.manual_seed(case_seed(run_seed(), family, index))
    measures = FAMILIES[family].check(spec, "cuda")
    record(family, spec, measures)
    assert all(m.ok for m in measures), report(measures)
