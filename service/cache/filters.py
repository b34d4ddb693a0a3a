"""Which entries a store call selects, said once for every backend.

The builders here turn an `EntryFilter`, a scoped search, a tenant or a list
of ids into backend-neutral `Condition`s (all of which must hold). Each
backend renders them into its library's filter with a small adapter
(`edge_store._edge_filter`, `qdrant_store._qdrant_filter`), and the in-memory
fake evaluates them directly (`holds`), so the three select the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service.cache.store import CacheEntry, EntryFilter, SearchQuery

__all__ = [
    "Bound",
    "Condition",
    "Equals",
    "HasIds",
    "entry_conditions",
    "holds",
    "id_conditions",
    "scope_conditions",
    "tenant_conditions",
]

BoundOp = Literal["lt", "lte", "gt"]


@dataclass(frozen=True)
class Equals:
    """The keyword payload field `key` equals `value`."""

    key: str
    value: str


@dataclass(frozen=True)
class Bound:
    """The float payload field `key` compares to `value` by `op` (`lt`, `lte`, `gt`)."""

    key: str
    op: BoundOp
    value: float


@dataclass(frozen=True)
class HasIds:
    """The point's id is one of `point_ids`."""

    point_ids: tuple[str, ...]


Condition = Equals | Bound | HasIds


def entry_conditions(selector: EntryFilter) -> list[Condition]:
    """The conditions `selector` sets (unset fields add none, matching everything)."""
    keywords = {
        "tenant": selector.tenant,
        "namespace": selector.namespace,
        "model": selector.model,
    }
    conditions: list[Condition] = [Equals(k, v) for k, v in keywords.items() if v is not None]
    bounds: tuple[tuple[str, BoundOp, float | None], ...] = (
        ("created_at", "lt", selector.created_before),
        ("expires_at", "lte", selector.expired_at),
        ("expires_at", "gt", selector.live_at),
    )
    conditions += [Bound(key, op, value) for key, op, value in bounds if value is not None]
    if selector.point_id is not None:
        conditions.append(HasIds((selector.point_id,)))
    return conditions


def scope_conditions(query: SearchQuery) -> list[Condition]:
    """A scoped search's conditions: its tenant and scope, live at its `now`."""
    return [
        Equals("tenant", query.tenant),
        Equals("scope", query.scope),
        Bound("expires_at", "gt", query.now),
    ]


def tenant_conditions(tenant: str) -> list[Condition]:
    """Every entry of `tenant`."""
    return [Equals("tenant", tenant)]


def id_conditions(point_ids: Sequence[str]) -> list[Condition]:
    """The entries stored under `point_ids` (ids absent from the store match nothing)."""
    return [HasIds(tuple(point_ids))]


def _compare(actual: float, op: BoundOp, value: float) -> bool:
    if op == "lt":
        return actual < value
    if op == "lte":
        return actual <= value
    return actual > value


def holds(condition: Condition, point_id: str, entry: CacheEntry) -> bool:
    """Whether `condition` holds for the entry stored under `point_id`."""
    if isinstance(condition, HasIds):
        return point_id in condition.point_ids
    actual = getattr(entry, condition.key)
    if isinstance(condition, Equals):
        return bool(actual == condition.value)
    return _compare(float(actual), condition.op, condition.value)
