"""The vocabulary of the conversion tables (formats.py): how a config key and a parameter of a
memlab network correspond to a target format's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Spec = dict[str, Any]  # a network's description (spec.describe)
Config = dict[str, Any]  # a target's config.json


@dataclass(frozen=True)
class Field:
    """Description key ``ours`` ↔ config key ``theirs``.

    read: the target config -> our value (default: ``theirs``, or the target's default);
    write: our value -> the target's (default: as it is); checked: compared on import (False for
    initialisation and training settings, which the weights do not depend on).
    """

    ours: str
    theirs: str
    read: Callable[[Config], Any] | None = None
    write: Callable[[Any], Any] | None = None
    checked: bool = True


def lm_fields(*norm_eps: Field) -> tuple[Field, ...]:
    """The fields of the language model around its mixers, by the keys of transformers-style
    configs; ``norm_eps``: the target's fields of the norms' epsilon, whose key differs."""
    return (
        Field("vocab_size", "vocab_size"),
        Field("d_model", "hidden_size"),
        Field("n_layers", "num_hidden_layers"),
        *norm_eps,
        Field("tie_embeddings", "tie_word_embeddings"),
    )


@dataclass(frozen=True)
class Rule:
    """A target config key memlab has no counterpart for: an export writes ``value`` (a callable
    of the description where it depends on it); an import accepts only what ``accepts`` does."""

    theirs: str
    value: Any
    accepts: Callable[[Any, Config], bool]
    rule: str


def accepts_only(*allowed: Any) -> Callable[[Any, Config], bool]:
    """A Rule's ``accepts`` for a fixed set of values."""
    return lambda value, config: value in allowed


@dataclass(frozen=True)
class Refusal:
    """A memlab setting the target cannot express: an export is refused unless ``ok(spec)``."""

    ours: str
    ok: Callable[[Spec], bool]
    rule: str


@dataclass(frozen=True)
class Param:
    """memlab parameter ``ours`` ↔ the target's ``theirs`` ({i}: the layer index). kind:

    same: one tensor, same shape. cat: ours = the tensors ``theirs`` joined along dim 0
    (fused projections). conv: ours [C, W] = theirs [C, 1, W] (a depthwise conv's weight).
    rows: ours [M, D, F] (MoM's memory_proj), row m = the transposed join of the tensors
    ``theirs(spec)[m]`` (that memory's k, v, β and decay projections).
    A parameter the network does not have (a bias that is off, one memory's router) is skipped.
    """

    ours: str
    theirs: tuple[str, ...] | Callable[[Spec], list[tuple[str, ...]]]
    kind: str = "same"


@dataclass(frozen=True)
class Format:
    """One target format: its config fields, its parameter table and what it cannot express.

    name: the config's ``model_type``. target: the class that loads it, in words.
    mixer: the memlab mixer class it holds; matches: whether a description is this format's.
    defaults: the target class's values of config keys a config.json may leave out.
    tied: the target's name of the LM head, absent from a file whose embeddings are tied.
    zeros: target tensors memlab has no parameter for, written as zeros: {name: shape(spec)}.
    """

    name: str
    target: str
    architecture: str
    mixer: str
    matches: Callable[[Spec], bool]
    fields: tuple[Field, ...]
    params: tuple[Param, ...]
    rules: tuple[Rule, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    defaults: Config = field(default_factory=dict)
    tied: str = "lm_head.weight"
    zeros: Callable[[Spec], dict[str, tuple[int, ...]]] | None = None

    def value(self, config: Config, key: str) -> Any:
        """config[key], or the target's default where config.json leaves it out."""
        return config[key] if key in config else self.defaults.get(key)
