"""Checks of DataModule arguments, worded as the ``data.<key>`` a user set."""

from __future__ import annotations

import numbers
from typing import Any

from memlab.errors import ConfigError


def integer_argument(key: str, value: Any, minimum: int, default: int | None = None) -> int:
    """``value`` as an int (``default`` for None, where one is given), or ConfigError naming
    ``data.<key>`` if it is not an integer (bools excluded) of at least ``minimum``."""
    if value is None and default is not None:
        return default
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigError(f"data.{key}: expected an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise ConfigError(f"data.{key} must be >= {minimum} (got {value})")
    return int(value)


def seed_argument(value: Any) -> int:
    """``data.seed`` as an int in [0, 2**32), the range of one word of a NumPy SeedSequence
    (ConfigError otherwise)."""
    seed = integer_argument("seed", value, 0)
    if seed >= 2**32:
        raise ConfigError(f"data.seed must be in [0, 2**32) (got {seed})")
    return seed
