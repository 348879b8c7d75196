"""MoM, Mamba and MemMamba on random configurations: the fast path (Triton kernels) against
the PyTorch twin with the same weights, and the twin against the layer in fp64 (see
tests/conformance/layers.py for the criteria)."""

from __future__ import annotations

import pytest
import torch

from tests.conformance.check import report
from tests.conformance.draw import case_seed
from tests.conformance.layers import LAYER_FAMILIES
from tests.gpu.conftest import case_params, run_seed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        per_family = metafunc.config.getoption("conformance_cases") // 5 if torch.cuda.is_available() else 1
        metafunc.parametrize("case", case_params(metafunc.config, LAYER_FAMILIES, max(per_family, 1)))


def test_layer(case: tuple[str, int, dict], record) -> None:
    family, index, spec = case
    torch.manual_seed(case_seed(run_seed(), family, index))
    measures = LAYER_FAMILIES[family].check(spec, "cuda")
    record(family, spec, measures)
    assert all(m.ok for m in measures), report(measures)
