"""`domain.assembled`: a dataclass made without its `__init__` is the one `__init__` makes."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest

from service.domain import CacheStatus, Completion, Usage, assembled


@dataclass(frozen=True)
class _Plain:
    a: int
    b: str = "b"
    c: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Checked:
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")


@dataclass(frozen=True, slots=True)
class _Slotted:
    a: int


def test_every_field_named_gives_the_instance_init_gives() -> None:
    made = assembled(_Plain, {"a": 1, "b": "x", "c": (2,)})
    assert made == _Plain(1, "x", (2,)) and hash(made) == hash(_Plain(1, "x", (2,)))
    assert repr(made) == repr(_Plain(1, "x", (2,)))
    with pytest.raises(FrozenInstanceError):
        made.a = 2  # type: ignore[misc]
    values: dict[str, Any] = {
        "content": "hi", "model": "m", "cache_status": CacheStatus.EXACT_HIT,
        "finish_reason": "stop", "usage": Usage(1, 2), "similarity": 1.0, "cost_usd": 0.0,
        "cost_saved_usd": 0.5, "latency_ms": 0.1, "cache_detail": "exact",
        "tool_calls_json": "", "tier": "", "route_reason": "cache", "route_score": 0.0,
        "upstream_attempts": 0, "entry_id": "e", "error_probability": 0.0,
    }  # fmt: skip
    assert assembled(Completion, dict(values)) == Completion(**values)


def test_anything_else_goes_through_init() -> None:
    assert assembled(_Plain, {"a": 1}) == _Plain(1)  # defaults filled
    with pytest.raises(TypeError):
        assembled(_Plain, {"a": 1, "d": 4})  # a name it lacks, one short
    with pytest.raises(TypeError):
        assembled(_Plain, {"a": 1, "b": 2, "d": 4})  # as many names as fields, one misspelt
    with pytest.raises(ValueError, match="negative"):
        assembled(_Checked, {"a": -1})  # __post_init__ still runs
    assert assembled(_Slotted, {"a": 1}) == _Slotted(1)
