"""Typed configuration schemas: a mixer's options as a frozen dataclass whose fields declare
their types and bounds. Building one checks every value and refuses the first bad one with a
single ConfigError line naming its key (``model.mixer.topk must be in 1..4 (got 5)``); only
rules that tie fields together are code, in the schema's ``check``.

    @dataclass(frozen=True)
    class MoMConfig(Schema):
        num_memories: int = option(4, ge=1)
        topk: int = option(2, ge=1)

        def check(self) -> None:
            self.require("topk", self.topk <= self.num_memories, f"<= num_memories={self.num_memories}")

    config = MoMConfig.build(options)   # options: a mapping from the config file

A nested schema is a field ``backbone: MambaConfig = field(default_factory=MambaConfig)``,
built from a mapping and reporting its keys as ``model.mixer.backbone.<key>``.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from memlab.errors import ConfigError

S = TypeVar("S", bound="Schema")
# The key prefix of the schema being built: a nested schema reports its keys under its parent's.
_prefix: ContextVar[str | None] = ContextVar("schema_prefix", default=None)


def option(default: Any, *, ge: float | None = None, le: float | None = None, gt: float | None = None) -> Any:
    """A schema field with its default and bounds (inclusive ``ge``/``le``, exclusive ``gt``)."""
    bounds = {k: v for k, v in (("ge", ge), ("le", le), ("gt", gt)) if v is not None}
    return dataclasses.field(default=default, metadata=bounds)


@dataclasses.dataclass(frozen=True)
class Schema:
    """Base of the schemas: subclasses are frozen dataclasses of typed ``option`` fields."""

    PREFIX: ClassVar[str] = "model.mixer"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(self._key(f.name), value, hints[f.name])
            _check_bounds(self._key(f.name), value, f.metadata)
        self.check()

    def check(self) -> None:
        """Rules that tie fields together; raise through ``require``."""

    def require(self, name: str, ok: bool, rule: str) -> None:
        """ConfigError ``<prefix>.<name> must be <rule> (got <value>)`` unless ``ok``."""
        if not ok:
            raise ConfigError(f"{self._key(name)} must be {rule} (got {getattr(self, name)!r})")

    def _key(self, name: str) -> str:
        return f"{_prefix.get() or self.PREFIX}.{name}"

    @classmethod
    def build(cls: type[S], options: Mapping[str, Any] | None = None, prefix: str | None = None) -> S:
        """The schema of ``options``; unknown keys are refused, nested schemas built from mappings."""
        options = dict(options or {})
        prefix = cls.PREFIX if prefix is None else prefix
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in options:
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{prefix}.{name} is not an option (known: {known})")
        hints = typing.get_type_hints(cls)
        for name, value in options.items():
            nested = hints[name]
            if isinstance(nested, type) and issubclass(nested, Schema) and isinstance(value, Mapping):
                options[name] = nested.build(value, f"{prefix}.{name}")
        token = _prefix.set(prefix)
        try:
            return cls(**options)
        finally:
            _prefix.reset(token)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _is(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True  # a type the schemas do not check (callables, ...)


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    return _NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _check_type(key: str, value: Any, hint: Any) -> None:
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not any(_is(value, k) for k in kinds):
        raise ConfigError(f"{key} must be {' or '.join(_describe(k) for k in kinds)} (got {value!r})")


def _check_bounds(key: str, value: Any, bounds: Mapping[str, float]) -> None:
    if value is None or not bounds:
        return
    ge, le, gt = bounds.get("ge"), bounds.get("le"), bounds.get("gt")
    if ge is not None and le is not None and not ge <= value <= le:
        raise ConfigError(f"{key} must be in {ge}..{le} (got {value!r})")
    if ge is not None and value < ge:
        raise ConfigError(f"{key} must be >= {ge} (got {value!r})")
    if le is not None and value > le:
        raise ConfigError(f"{key} must be <= {le} (got {value!r})")
    if gt is not None and not value > gt:
        raise ConfigError(f"{key} must be > {gt} (got {value!r})")
