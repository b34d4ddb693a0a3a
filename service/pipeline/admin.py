"""Cache administration: invalidation and per-tenant statistics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from service.cache.semantic import SemanticCache
from service.cache.stats import CacheStats, TenantCounters
from service.cache.store import EntryFilter, StoreHealth
from service.cache.verify.counters import OTHER_NAMESPACES, VerificationCounters
from service.cache.verify.learning import Learning
from service.domain import Feedback, FeedbackReceipt
from service.errors import InvalidRequestError
from service.pipeline.seed import Seed, Seeder
from service.validation import MAX_MODEL_NAME_CHARS, MAX_REQUEST_ID_CHARS, check_name

log = structlog.get_logger(__name__)

# Most tenants an admin's all-tenant view lists from the store (those with the most
# entries), and from this replica's counters (those with the most requests); each costs
# the view one count. Found from outside: in open mode callers name tenants, and the
# counted ones were all listed, 40 bytes each, toward gRPC's 4 MiB message limit.
MAX_TENANTS_LISTED = 1000


@dataclass(frozen=True)
class NamespaceVerification:
    """What verification saw in one namespace of a tenant, on this replica."""

    namespace: str
    counters: VerificationCounters


@dataclass(frozen=True)
class TenantStats:
    """One tenant's live entry count, this replica's counters, and its store's health.

    `verification` has one row per namespace the decision has seen (sorted).
    """

    tenant: str
    entries: int
    counters: TenantCounters
    store: StoreHealth
    verification: tuple[NamespaceVerification, ...] = ()


@dataclass(frozen=True)
class Overview:
    """Every tenant at a glance: the busiest few by name, and totals over all of them."""

    busiest: list[str]  # the tenants with the most requests counted, busiest first
    tenants: int  # tenants with entries in the store (the listed ones) or counted
    entries: int  # live entries of every tenant
    counters: TenantCounters  # every counted tenant's, added together


@dataclass(frozen=True)
class Invalidation:
    """Which of a tenant's entries to delete; see InvalidateCacheRequest."""

    tenant: str | None  # None: every tenant (an admin's call)
    namespace: str | None = None
    model: str | None = None
    older_than_s: float = 0.0
    everything: bool = False


class CacheAdmin:
    """What operators ask of the cache as a whole, rather than of one answer."""

    def __init__(
        self,
        cache: SemanticCache,
        stats: CacheStats,
        seeder: Seeder,
        learning: Learning | None = None,
    ) -> None:
        self._cache = cache
        self._stats = stats
        self._seeder = seeder
        self._learning = learning

    async def submit_feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Record an application's verdict on an answer (see `verify.learning.Learning`).

        Raises:
            InvalidRequestError: no id, a malformed one, or ids naming different entries.
            NotFoundError: an unknown entry or request id, or another tenant's entry.
        """
        check_name("tenant", feedback.tenant)
        if feedback.entry_id:
            feedback = replace(feedback, entry_id=_entry_id(feedback.entry_id))
        if len(feedback.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidRequestError(
                f"request_id is {len(feedback.request_id)} characters; send the response's"
                f" request_id (at most {MAX_REQUEST_ID_CHARS})"
            )
        if self._learning is None:
            raise InvalidRequestError("this service records no feedback")
        return await self._learning.feedback(feedback)

    async def put_entries(self, seeds: Sequence[Seed]) -> list[str | Exception]:
        """Store curated answers; per seed, its entry id or why not (see `Seeder.put`).

        Raises:
            InvalidRequestError: no seeds, or too many in one call.
        """
        return await self._seeder.put(seeds)

    async def tenants(self) -> list[str]:
        """The tenants with entries in the store and those counted by this replica since it
        started, the `MAX_TENANTS_LISTED` with the most of each, sorted (found from
        outside: after a restart, or for a tenant that had only seeded, the store's
        tenants were missing)."""
        stored = await self._stored_tenants()
        return sorted({*self._stats.busiest(MAX_TENANTS_LISTED), *stored})

    async def _stored_tenants(self) -> list[str]:
        try:
            return await self._cache.store.tenants(MAX_TENANTS_LISTED)
        except Exception as error:  # the counted ones are still worth listing
            log.warning("cannot list the store's tenants", error=repr(error))
            return []

    async def overview(self, busiest: int) -> Overview:
        """The `busiest` tenants by requests (then the store's, by name, if room), how
        many tenants there are, and totals: one store count, not one per tenant."""
        stored = await self._stored_tenants()
        shown = self._stats.busiest(busiest)
        shown += sorted(set(stored) - set(shown))[: busiest - len(shown)]
        tenants = len({*self._stats.tenants(), *stored})
        entries = await self._cache.store.count(EntryFilter(live_at=time.time()))
        return Overview(shown, tenants, entries, self._stats.total())

    async def tenant_stats(self, tenant: str, namespace: str | None) -> TenantStats:
        """Counters and the live entry count for `tenant` (optionally one namespace).

        Raises:
            InvalidRequestError: a malformed tenant or namespace.
        """
        check_name("tenant", tenant)
        if namespace is not None:
            check_name("namespace", namespace)
        entries = await self._cache.live_entries(tenant, namespace)
        counters = self._stats.for_tenant(tenant)
        rows = self._learning.counters(tenant) if self._learning is not None else []
        verification = tuple(NamespaceVerification(ns, c) for ns, c in _rows_of(rows, namespace))
        return TenantStats(tenant, entries, counters, self._cache.store.health(), verification)

    async def invalidate(self, what: Invalidation) -> int:
        """Delete the entries that `what` selects; returns how many.

        Raises:
            InvalidRequestError: no filter was set and `everything` was not asked for,
                or a filter is malformed.
        """
        _check_invalidation(what)
        created_before = time.time() - what.older_than_s if what.older_than_s else None
        selector = EntryFilter(
            tenant=what.tenant,
            namespace=what.namespace,
            model=what.model,
            created_before=created_before,
        )
        return await self._cache.invalidate(selector)

    async def delete_entry(self, tenant: str | None, entry_id: str) -> bool:
        """Delete the entry `entry_id` if it belongs to `tenant` (None: any tenant's).

        Another tenant's entry is left alone and reported exactly like a missing
        one (False), so an id never reveals whether it exists elsewhere.

        Raises:
            InvalidRequestError: `entry_id` is not an entry id (a UUID).
        """
        selector = EntryFilter(tenant=tenant, point_id=_entry_id(entry_id))
        return await self._cache.invalidate(selector) > 0


def _entry_id(entry_id: str) -> str:
    """`entry_id` in the one form entries are stored under (lower case, dashed): the
    `uuid` module also reads braces, `urn:uuid:`, upper case and no dashes.

    Raises:
        InvalidRequestError: it is not a UUID.
    """
    try:
        return str(uuid.UUID(entry_id))
    except ValueError:
        raise InvalidRequestError(
            f"entry_id {entry_id[:64]!r} is not an entry id: send the entry_id of a response"
        ) from None


def _check_invalidation(what: Invalidation) -> None:
    if what.tenant is not None:
        check_name("tenant", what.tenant)
    if what.namespace is not None:
        check_name("namespace", what.namespace)
    if what.model is not None and len(what.model) > MAX_MODEL_NAME_CHARS:
        raise InvalidRequestError(
            f"model name is longer than {MAX_MODEL_NAME_CHARS} characters; no answer is"
            " stored under such a name"
        )
    if what.older_than_s < 0:
        raise InvalidRequestError("older_than_s must be 0 (any age) or a positive number")
    has_filter = bool(what.namespace or what.model or what.older_than_s)
    if not has_filter and not what.everything:
        raise InvalidRequestError(
            "set namespace, model or older_than_s, or set all=true to delete every entry"
        )


def _rows_of(
    rows: list[tuple[str, VerificationCounters]], namespace: str | None
) -> list[tuple[str, VerificationCounters]]:
    """The verification rows to show for `namespace` (None: all): its own, or, when it
    has none and the tenant's namespaces past the bound share a row, that one (found
    from outside: such a namespace's stats showed no verification at all)."""
    if namespace is None:
        return rows
    own = [row for row in rows if row[0] == namespace]
    return own or [row for row in rows if row[0] == OTHER_NAMESPACES]
