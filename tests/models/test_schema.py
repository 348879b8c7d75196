"""Typed config schemas: every wrong key, type or bound is one ConfigError line naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from memlab.errors import ConfigError
from memlab.models.schema import Schema, option


@dataclass(frozen=True)
class Inner(Schema):
    d_state: int = option(16, ge=1, le=256)


@dataclass(frozen=True)
class Outer(Schema):
    num_memories: int = option(4, ge=1)
    topk: int = option(2, ge=1)
    rate: float = option(0.5, gt=0)
    shared_mem: bool = True
    fusion: Literal["gated", "residual"] = "gated"
    backend: str | None = None
    backbone: Inner = field(default_factory=Inner)

    def check(self) -> None:
        self.require("topk", self.topk <= self.num_memories, f"at most num_memories={self.num_memories}")


def test_defaults_and_nested_mappings_build() -> None:
    config = Outer.build({"topk": 3, "rate": 1, "backbone": {"d_state": 8}})
    assert config.topk == 3 and config.rate == 1 and config.backbone == Inner(d_state=8)
    assert Outer.build() == Outer()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"topk": "abc"}, "model.mixer.topk must be an integer (got 'abc')"),
        ({"topk": True}, "model.mixer.topk must be an integer (got True)"),
        ({"shared_mem": 1}, "model.mixer.shared_mem must be true or false (got 1)"),
        ({"rate": 0}, "model.mixer.rate must be > 0 (got 0)"),
        ({"num_memories": 0}, "model.mixer.num_memories must be >= 1 (got 0)"),
        ({"fusion": "sum"}, "model.mixer.fusion must be one of 'gated', 'residual' (got 'sum')"),
        ({"backend": 3}, "model.mixer.backend must be a string or null (got 3)"),
        ({"topk": 5}, "model.mixer.topk must be at most num_memories=4 (got 5)"),
        ({"backbone": {"d_state": 0}}, "model.mixer.backbone.d_state must be in 1..256 (got 0)"),
        ({"backbone": {"conv": 4}}, "model.mixer.backbone.conv is not an option (known: d_state)"),
        ({"top_k": 2}, "model.mixer.top_k is not an option (known: backbone, backend, fusion,"),
    ],
)
def test_each_mistake_is_one_line_naming_its_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Outer.build(options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
