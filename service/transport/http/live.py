"""The live page: `GET /live` (one HTML file, no external assets) polls `GET /live.json`.

`/live.json` shows what the cache did since this replica started: hits
(exact and semantic), misses and bypasses, the hit rate, money spent upstream
and saved by hits, per tenant from the cache's counters; latency percentiles
of completion calls (both doors) from `semcache_request_duration_seconds`;
and the most common reasons the cache did not serve, from
`semcache_cache_decisions_total`. An admin key (or open mode) sees every
tenant (`?tenant=NAME` narrows it to one); a client key sees its own tenant
only, and asking for another is a 403. Latency percentiles are
service-wide: the histogram has no tenant label. No prompt or answer text is
ever shown; there is no setting that would show it.

The page itself holds no data and needs no key; `/live.json` takes the same
key as the API (the page asks for one when it gets a 401 and keeps it in the
tab's sessionStorage only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from service.auth import Principal, resolve_tenant
from service.cache.stats import TenantCounters
from service.cache.verify.verifier import SAME_QUESTION_DETAILS
from service.domain import added_up
from service.metrics import Metrics
from service.pipeline.admin import CacheAdmin
from service.transport.http.door import DOOR

PAGE = resources.files(__package__).joinpath("live.html").read_text(encoding="utf-8")
# Completion calls of both doors: gRPC method names and the HTTP door's labels.
COMPLETION_RPCS = frozenset(
    {"Complete", "StreamComplete", "http_chat_completions", "http_chat_completions_stream"}
)
SERVED_FROM = {"exact_hit": "hit", "semantic_hit": "hit", "miss": "miss", "bypass": "miss"}
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# The details a served hit carries (README, the `cache_detail` table); every other one is
# why the cache did not serve. Found from outside: `identical`, `same_form` and
# `audit_unanswered` hits were listed among the refusal reasons.
HIT_DETAILS = frozenset({"exact", "ok", "audit_unanswered", *SAME_QUESTION_DETAILS})
TOP_REASONS = 8
TENANTS_SHOWN = 50  # rows of the all-tenants view; the totals count every tenant

Buckets = list[tuple[float, float]]


async def live_page(request: web.Request) -> web.Response:
    """`GET /live`: the page; its script fetches `/live.json` every 2 s."""
    return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def live_json(request: web.Request) -> web.Response:
    """`GET /live.json`: the numbers the page shows (see the module docstring).

    Raises:
        AuthenticationError: keys are configured and the caller sent no known key.
    """
    door = request.app[DOOR]
    principal = door.principal(request)
    requested = request.query.get("tenant")
    tenants = await _visible_tenants(door.app.admin, principal, requested)
    snapshot = await live_snapshot(door.app.admin, door.app.metrics, principal, tenants)
    return web.json_response(snapshot, headers={"Cache-Control": "no-store"})


async def _visible_tenants(
    admin: CacheAdmin, viewer: Principal, requested: str | None
) -> list[str] | None:
    """`?tenant=` when the viewer may see it; else every tenant (None) for an admin, its
    own for a client key.

    Raises:
        PermissionDeniedError: a client key asked for another tenant.
    """
    if requested:
        return [resolve_tenant(viewer, requested)]
    return None if viewer.is_admin else [viewer.tenant]


async def live_snapshot(
    admin: CacheAdmin, metrics: Metrics, viewer: Principal, tenants: list[str] | None
) -> dict[str, Any]:
    """What the live page shows of `tenants` (which `viewer` may see), now; None: every
    tenant, the `TENANTS_SHOWN` busiest by name (found from outside: a row for each of
    7,000 tenants, a store count each, took 3.2 s and 1.3 MB every 2 s)."""
    decisions = metrics.cache_decisions()
    if tenants is None:
        overview = await admin.overview(TENANTS_SHOWN)
        shown = [await admin.tenant_stats(tenant, None) for tenant in overview.busiest]
        totals = {"entries": overview.entries, **_counters(overview.counters)}
        reasons, count = refusal_reasons(decisions, None), overview.tenants
    else:
        shown = [await admin.tenant_stats(tenant, None) for tenant in tenants]
        counters = added_up(TenantCounters(), (stats.counters for stats in shown))
        totals = {"entries": sum(stats.entries for stats in shown), **_counters(counters)}
        reasons, count = refusal_reasons(decisions, set(tenants)), len(shown)
    rows = [{"tenant": s.tenant, "entries": s.entries, **_counters(s.counters)} for s in shown]
    # False: a tenant's answers are counted in the metrics under `(other)` (past
    # SEMCACHE_METRICS_MAX_TENANTS), so its refusal reasons cannot be told apart.
    apart = tenants is None or all(metrics.tenant_label.apart(t) for t in tenants)
    return {
        "generated_at_unix_s": round(time.time(), 3),
        "viewer": {"tenant": viewer.tenant, "all_tenants": viewer.is_admin},
        "totals": totals,
        "tenants": rows,
        "tenants_total": count,
        "latency_ms": _shown_to(viewer, latency_ms(metrics.request_duration_buckets())),
        "refusal_reasons": reasons,
        "refusal_reasons_complete": apart,
        "prompts_shown": False,
    }


def _shown_to(viewer: Principal, latency: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The service-wide latency as `viewer` may see it: a client key gets the quantiles
    but not how many calls they cover (found from outside: that count told one
    tenant's key how much traffic the others sent)."""
    if viewer.is_admin:
        return latency
    return {served: {**summary, "count": None} for served, summary in latency.items()}


def _counters(counters: TenantCounters) -> dict[str, Any]:
    return {
        "requests": counters.requests,
        "exact_hits": counters.exact_hits,
        "semantic_hits": counters.semantic_hits,
        "misses": counters.misses,
        "bypasses": counters.bypasses,
        "hit_rate": counters.hit_rate,
        "cost_spent_usd": round(counters.cost_spent_usd, 8),
        "cost_saved_usd": round(counters.cost_saved_usd, 8),
    }


def refusal_reasons(
    decisions: Mapping[tuple[str, str], float], tenants: set[str] | None
) -> list[dict[str, Any]]:
    """The commonest reasons the cache did not serve, for `tenants` (None: every one,
    those past the metrics' bound on tenants included), most frequent first."""
    counts: dict[str, float] = {}
    for (tenant, detail), count in decisions.items():
        if (tenants is None or tenant in tenants) and detail not in HIT_DETAILS:
            counts[detail] = counts.get(detail, 0.0) + count
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    return [{"reason": reason, "count": int(count)} for reason, count in ranked]


def latency_ms(series: Mapping[tuple[str, str], Buckets]) -> dict[str, dict[str, Any]]:
    """p50/p95/p99 of completion calls served from the cache ("hit") and not ("miss")."""
    merged: dict[str, dict[float, float]] = {"hit": {}, "miss": {}}
    for (rpc, cache), buckets in series.items():
        served = SERVED_FROM.get(cache)
        if rpc in COMPLETION_RPCS and served is not None:
            for upper_s, count in buckets:
                merged[served][upper_s] = merged[served].get(upper_s, 0.0) + count
    return {served: _summary(sorted(buckets.items())) for served, buckets in merged.items()}


def _summary(buckets: Buckets) -> dict[str, Any]:
    count = buckets[-1][1] if buckets else 0.0
    summary: dict[str, Any] = {"count": int(count)}
    for name, q in QUANTILES.items():
        seconds = quantile_s(q, buckets)
        summary[name] = None if seconds is None else round(seconds * 1000, 2)
    return summary


def quantile_s(q: float, buckets: Buckets) -> float | None:
    """The `q` quantile of cumulative histogram `buckets` ((upper bound s, count), +Inf
    last), interpolated linearly within a bucket as Prometheus' `histogram_quantile`
    does; None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_s, below = 0.0, 0.0
    for upper_s, cumulative in buckets:
        if cumulative >= rank:
            if upper_s == float("inf"):
                return lower_s  # beyond the largest bound: report that bound
            inside = cumulative - below
            return lower_s + (upper_s - lower_s) * ((rank - below) / inside if inside else 1.0)
        lower_s, below = upper_s, cumulative
    return lower_s
