"""The value types a config's ``_target_`` declares for its arguments, checked before it is built: a
flag, count or rate of the wrong type is refused with a line naming its key instead of failing
somewhere inside the object (``shared_mem=maybe``, ``lr=abc``)."""

from __future__ import annotations

import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError

# The argument types checked here, each with how a message names it; others are left to the object.
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number"}


def check_declared_types(node: DictConfig, key: str) -> None:
    """ConfigError naming ``<key>.<name>`` for the first argument of a ``_target_`` node in ``node``
    (itself or nested) whose value lacks the type its target's signature declares (bool, int,
    float, or a union of them, possibly with None)."""
    _walk(OmegaConf.to_container(node, resolve=True), key)


def _walk(value: Any, key: str) -> None:
    if isinstance(value, Mapping):
        declared = _declared(value.get("_target_"))
        for name, item in value.items():
            where = f"{key}.{name}"
            allowed = declared.get(name)
            if allowed and not any(_is(item, t) for t in allowed):
                wanted = " or ".join(_EXPECTED.get(t, "null") for t in allowed)
                raise ConfigError(f"{where}: expected {wanted} (got {item!r})")
            _walk(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{key}[{i}]")


def _declared(target: Any) -> dict[str, tuple[type, ...]]:
    """Argument name -> the types it takes, for the arguments declared with checked types only."""
    if not isinstance(target, str):
        return {}
    try:
        obj = get_object(target)
        hints = typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    except Exception:
        return {}  # a target that cannot be inspected is checked by instantiating it
    out = {}
    for name, hint in hints.items():
        parts = _union(hint)
        if parts and all(t in _EXPECTED or t is type(None) for t in parts):
            out[name] = parts
    return out


def _union(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is(value: Any, expected: type) -> bool:
    checks: dict[Any, Callable[[Any], bool]] = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
        float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
        type(None): lambda v: v is None,
    }
    return checks[expected](value)
