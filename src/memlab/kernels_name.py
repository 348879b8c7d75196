"""Keep the import name ``kernels`` for the PyPI package of that name (run on ``import memlab``).

memlab's Triton kernels live in a top-level ``kernels/`` folder installed as ``memlab.kernels``.
Where the repository root is on ``sys.path`` (tests, ``PYTHONPATH=.``) that folder is also found
as a top-level ``kernels``, and transformers, which looks the PyPI ``kernels`` package up with
``importlib.util.find_spec("kernels")`` and imports it when its version fits, would import
memlab's folder instead and fail (``cannot import name 'CUDAProperties'``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def _is_memlab_folder(spec: importlib.machinery.ModuleSpec | None) -> bool:
    origin = None if spec is None else spec.origin
    return origin is not None and (Path(origin).resolve().parents[1] / "src" / "memlab").is_dir()


class _SkipMemlabKernels(importlib.abc.MetaPathFinder):
    """Finds the top-level ``kernels`` on ``sys.path`` without folders that hold memlab's."""

    def find_spec(self, name, path=None, target=None):
        if name != "kernels":
            return None
        for entry in sys.path:
            spec = importlib.machinery.PathFinder.find_spec(name, [entry])
            if spec is not None and not _is_memlab_folder(spec):
                return spec
        return None


def keep_kernels_name() -> None:
    """Make ``import kernels`` (and ``find_spec``) skip memlab's folder: the PyPI package where it
    is installed, else no module at all. Idempotent; nothing changes where the folder is not
    importable as ``kernels``."""
    if any(isinstance(finder, _SkipMemlabKernels) for finder in sys.meta_path):
        return
    if "kernels" in sys.modules:
        if not _is_memlab_folder(getattr(sys.modules["kernels"], "__spec__", None)):
            return
        del sys.modules["kernels"]  # memlab's folder under the PyPI package's name
    elif not _is_memlab_folder(importlib.util.find_spec("kernels")):
        return
    finder = _SkipMemlabKernels()
    if finder.find_spec("kernels") is None:
        sys.modules["kernels"] = None  # find_spec answers None: "not installed"
    else:
        sys.meta_path.insert(0, finder)
