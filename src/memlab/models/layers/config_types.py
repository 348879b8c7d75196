"""Type checks of ``model.mixer.*`` values, run before a mixer compares them with its bounds,
so that ``d_state=null`` or ``topk=abc`` is refused with a line naming the key rather than
surfacing as a TypeError from the comparison."""

from __future__ import annotations

import numbers

from memlab.errors import ConfigError


def is_int(value: object) -> bool:
    """An integer, not a bool (``true`` would pass ``isinstance(value, int)``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_types(integers: dict[str, object], reals: dict[str, object]) -> None:
    """Raise ConfigError for the first ``model.mixer.<key>`` that is not an integer (``integers``)
    or not a real number (``reals``; integers count); bools are neither."""
    for key, value in integers.items():
        if not is_int(value):
            raise ConfigError(f"model.mixer.{key} must be an integer (got {value!r})")
    for key, value in reals.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ConfigError(f"model.mixer.{key} must be a number (got {value!r})")
