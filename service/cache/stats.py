"""Per-tenant cache counters, kept in this replica's memory since it started."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from service.domain import CacheStatus, added_up


@dataclass
class TenantCounters:
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    cost_saved_usd: float = 0.0
    cost_spent_usd: float = 0.0

    @property
    def hits(self) -> int:
        return self.exact_hits + self.semantic_hits

    @property
    def lookups(self) -> int:
        """Hits and misses: bypasses are not lookups."""
        return self.hits + self.misses

    @property
    def requests(self) -> int:
        return self.lookups + self.bypasses

    @property
    def hit_rate(self) -> float:
        """Hits over lookups; 0 before the first lookup."""
        return self.hits / self.lookups if self.lookups else 0.0


class CacheStats:
    """Counts what the cache did, per tenant."""

    def __init__(self) -> None:
        self._tenants: defaultdict[str, TenantCounters] = defaultdict(TenantCounters)

    def record(self, tenant: str, status: CacheStatus, cost_usd: float, saved_usd: float) -> None:
        """Count one request as `status` and add what it spent and saved."""
        self.count(tenant, status)
        self.add_money(tenant, cost_usd, saved_usd)

    def count(self, tenant: str, status: CacheStatus, by: int = 1) -> None:
        """Count `by` requests as `status`: a hit when it is served, a miss or a bypass
        once the lookup has decided (so one that then fails, or whose caller leaves,
        is still counted, as `semcache_cache_lookups_total` counts it)."""
        counters = self._tenants[tenant]
        if status is CacheStatus.EXACT_HIT:
            counters.exact_hits += by
        elif status is CacheStatus.SEMANTIC_HIT:
            counters.semantic_hits += by
        elif status is CacheStatus.MISS:
            counters.misses += by
        else:
            counters.bypasses += by

    def add_money(self, tenant: str, cost_usd: float, saved_usd: float) -> None:
        counters = self._tenants[tenant]
        counters.cost_spent_usd += cost_usd
        counters.cost_saved_usd += saved_usd

    def add_spent(self, tenant: str, cost_usd: float) -> None:
        """Upstream spend not tied to one request's outcome (a shared call's, counted once
        when it is paid, whoever is still waiting for it)."""
        self._tenants[tenant].cost_spent_usd += cost_usd

    def tenants(self) -> list[str]:
        """Every tenant this replica has counted, sorted."""
        return sorted(self._tenants)

    def busiest(self, limit: int) -> list[str]:
        """The `limit` tenants with the most requests counted (ties by name)."""
        requests = {t: c.requests for t, c in list(self._tenants.items())}
        return sorted(requests, key=lambda t: (-requests[t], t))[:limit]

    def total(self) -> TenantCounters:
        """Every tenant's counters added together."""
        return added_up(TenantCounters(), list(self._tenants.values()))

    def hit_counts(self) -> dict[str, tuple[int, int]]:
        """Each tenant's (hits, lookups), which its hit rate divides (for the metrics)."""
        return {tenant: (c.hits, c.lookups) for tenant, c in list(self._tenants.items())}

    def for_tenant(self, tenant: str) -> TenantCounters:
        """A copy of `tenant`'s counters (zeros for a tenant never seen)."""
        counters = self._tenants.get(tenant, TenantCounters())
        return TenantCounters(**vars(counters))
