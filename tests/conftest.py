"""Shared fixtures: compose the real Hydra configs into temporary run folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
os.environ.setdefault("MEMLAB_ROOT", str(ROOT))

# Small enough for a 2-core CPU: a few seconds per short run.
TINY = [
    "model.d_model=32",
    "data.vocab_size=64",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.train_segments=[{seq_len:32,num_kv_pairs:4,num_examples:256}]",
    "data.val_segments=[{seq_len:32,num_kv_pairs:4,num_examples:32},{seq_len:32,num_kv_pairs:2,num_examples:16}]",
    "trainer.accelerator=cpu",
    "extras.print_config=false",
]


def compose_config(overrides: list[str], run_dir: Path, config_name: str = "train") -> DictConfig:
    """The composed config, as `scripts/train.py` would see it, writing into ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # a real run's task config has no `hydra` node either
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir.parent)
    return cfg


@pytest.fixture
def fresh_compiler() -> dict:
    """torch.compile from scratch, with dynamo's counters at zero; yields the counters (a test
    that must have compiled checks ``["stats"]["unique_graphs"]``). Every mixer's blocks share
    Block.forward's code, and past its recompile limit dynamo runs that code eagerly: without a
    reset, a test's outcome would depend on the compiled tests that ran before it."""
    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    return counters


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(overrides: list[str] = (), run: str = "run", config_name: str = "train") -> DictConfig:
        return compose_config([*TINY, *overrides], tmp_path / run, config_name)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/gpu are marked ``gpu`` and skipped without a CUDA device. Tests marked
    ``interpreted`` run only under TRITON_INTERPRET=1 (see tests/interpreter.py): elsewhere they
    are deselected, not skipped, since their launcher test runs them."""
    gpu_dir = ROOT / "tests" / "gpu"
    no_cuda = pytest.mark.skip(reason="needs a CUDA device (run with `make test-gpu` on a GPU)")
    for item in items:
        if gpu_dir in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(no_cuda)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    kept = [item for item in items if item.get_closest_marker("interpreted") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("interpreted")])
        items[:] = kept


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memlab conformance")
    group.addoption(
        "--conformance-seed",
        type=int,
        default=None,
        help="seed of the randomized conformance cases (default: $MEMLAB_TEST_SEED, else fresh)",
    )
    group.addoption(
        "--conformance-cases",
        type=int,
        default=500,
        help="random cases per op family in tests/gpu (layers get a fifth of it); default 500",
    )
    group.addoption(
        "--conformance-shapes",
        type=int,
        default=64,
        help="distinct compiled shapes per family among them, drawn afresh each run; default 64",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Fix the conformance seed once, in the environment, so that pytest-xdist's workers draw
    the same cases as the controller."""
    seed = config.getoption("conformance_seed") or os.environ.get("MEMLAB_TEST_SEED")
    os.environ["MEMLAB_TEST_SEED"] = str(
        seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    )
    # Under --dist loadgroup the workers queue the GPU suite's groups longest first
    # (tests/gpu/conftest.py): pytest-xdist is to keep that order, not sort them by size.
    if getattr(config.option, "dist", "no") == "loadgroup":
        config.option.loadscopereorder = False


def pytest_report_header(config: pytest.Config) -> str:
    seed = os.environ["MEMLAB_TEST_SEED"]
    return f"conformance seed: {seed} (draw the same cases again with --conformance-seed {seed})"
