"""Checks of DataModule arguments, worded as the ``data.<key>`` a user set."""

from __future__ import annotations

import numbers
from typing import Any

from memlab.errors import ConfigError


def integer_argument(key: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or ConfigError naming ``data.<key>`` if it is not an integer (bools
    excluded) of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigError(f"data.{key}: expected an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise ConfigError(f"data.{key} must be >= {minimum} (got {value})")
    return int(value)
