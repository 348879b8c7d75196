"""lm-evaluation-harness is an optional dependency (``pip install 'memlab[eval]'``): import it
through here, so that its absence is one ConfigError line rather than a traceback."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from memlab.errors import ConfigError

# The suites and tasks memlab ships in lm-eval's YAML format (added to every task search path).
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def require_harness() -> ModuleType:
    """The ``lm_eval`` package; ConfigError if it is not installed."""
    try:
        import lm_eval
    except ImportError as exc:
        raise ConfigError(
            f"task=lm_eval needs lm-evaluation-harness: pip install 'memlab[eval]' ({exc})"
        ) from exc
    return lm_eval
