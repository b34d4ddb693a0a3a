"""What each answer cost or saved: counted per tenant, in metrics, and in its `Completion`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from service.cache.semantic import CacheHit, Lookup
from service.cache.stats import CacheStats
from service.domain import CacheStatus, Completion, Usage, assembled
from service.llm.catalogue import Catalogue
from service.llm.provider import ProviderAnswer
from service.metrics import Metrics
from service.routing.router import RouteDecision

log = structlog.get_logger(__name__)


class Ledger:
    """Books every answer (hit or upstream) into the stats and metrics, and receipts it."""

    def __init__(self, catalogue: Catalogue, stats: CacheStats, metrics: Metrics) -> None:
        self._catalogue = catalogue
        self._stats = stats
        self._metrics = metrics

    def cost_usd(self, answer: ProviderAnswer) -> float:
        """What `answer` cost at the catalogue's price (0, with a warning, if unpriced)."""
        spec = self._catalogue.models.get(answer.model)
        if spec is None:
            log.warning("no price for model; cost counted as 0", model=answer.model)
            return 0.0
        return spec.price.cost_usd(answer.usage.prompt_tokens, answer.usage.completion_tokens)

    def looked_up(self, tenant: str, lookup: Lookup | None) -> None:
        """Count a request the cache did not serve, once the lookup said so: a miss (a
        refresh included), or a bypass when it skipped the cache. Counted before the
        provider is asked, so a call that fails or is left is still counted."""
        self._stats.count(tenant, CacheStatus.BYPASS if lookup is None else CacheStatus.MISS)

    def hit(self, tenant: str, hit: CacheHit, started: float, instead: bool = False) -> Completion:
        """Count a served cache hit and return its completion. `instead`: served after
        all, when the upstream call meant to judge it failed; counted as a miss when the
        lookup decided, it is counted as the hit it became."""
        entry = hit.entry
        self._stats.record(tenant, hit.status, 0.0, entry.cost_usd)
        if instead:
            self._stats.count(tenant, CacheStatus.MISS, by=-1)
        self._metrics.record_served_hit(
            tenant,
            hit.detail,
            entry.model,
            entry.prompt_tokens,
            entry.completion_tokens,
            entry.cost_usd,
        )
        # Every field named: built without the frozen dataclass's __init__ (issue 13).
        return assembled(
            Completion,
            {
                "content": entry.content,
                "model": entry.model,
                "cache_status": hit.status,
                "finish_reason": entry.finish_reason,
                "usage": Usage(entry.prompt_tokens, entry.completion_tokens),
                "similarity": hit.similarity,
                "cost_usd": 0.0,
                "cost_saved_usd": entry.cost_usd,
                "latency_ms": elapsed_ms(started),
                "cache_detail": hit.detail,
                "tool_calls_json": entry.tool_calls_json,
                "tier": self._tier_of(entry.model),
                "route_reason": "cache",
                "route_score": 0.0,
                "upstream_attempts": 0,
                "entry_id": hit.point_id,
                "error_probability": hit.error_probability,
            },
        )

    def spent(self, tenant: str, answer: ProviderAnswer, cost_usd: float) -> None:
        """Count what a shared upstream call cost, once, as soon as it is paid: its
        requests' receipts (`prepaid`) then count only their outcomes. Found from
        outside: a miss whose caller went away still finished and was stored, but
        its cost was counted by nobody."""
        self._stats.add_spent(tenant, cost_usd)
        usage = answer.usage
        self._metrics.record_usage(
            tenant,
            answer.model,
            usage.prompt_tokens,
            usage.completion_tokens,
            cost_usd,
            saved=False,
        )

    def upstream(self, receipt: UpstreamReceipt) -> Completion:
        """Count what an upstream answer spent or saved (`saved_usd` > 0 when it was
        shared) and return it; the request itself was counted by `looked_up`."""
        answer, lookup = receipt.answer, receipt.lookup
        status = CacheStatus.BYPASS if lookup is None else CacheStatus.MISS
        spent_usd = 0.0 if receipt.prepaid else receipt.spent_usd
        self._stats.add_money(receipt.tenant, spent_usd, receipt.saved_usd)
        self._metrics.record_cache_decision(receipt.tenant, receipt.detail)
        usage = answer.usage
        if receipt.saved_usd > 0 or not receipt.prepaid:
            self._metrics.record_usage(
                receipt.tenant,
                answer.model,
                usage.prompt_tokens,
                usage.completion_tokens,
                receipt.saved_usd or receipt.spent_usd,
                saved=receipt.saved_usd > 0,
            )
        route = receipt.route
        reason = f"fallback:{answer.fallback_from}" if answer.fallback_from else route.reason
        return Completion(
            content=answer.content,
            model=answer.model,
            cache_status=status,
            finish_reason=answer.finish_reason,
            usage=usage,
            similarity=lookup.best_similarity if lookup else 0.0,
            cost_usd=receipt.spent_usd,
            cost_saved_usd=receipt.saved_usd,
            latency_ms=elapsed_ms(receipt.started),
            cache_detail=receipt.detail,
            tool_calls_json=answer.tool_calls_json,
            tier=self._tier_of(answer.model) or route.tier,
            route_reason=reason,
            route_score=route.score,
            upstream_attempts=answer.attempts,
            entry_id=receipt.entry_id,
        )

    def _tier_of(self, model: str) -> str:
        spec = self._catalogue.models.get(model)
        return spec.tier if spec is not None else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamReceipt:
    """One upstream answer and what the pipeline knew when it asked for it.

    `spent_usd` is what this request paid; `saved_usd` > 0 when it shared
    another request's upstream call instead. `detail` is the cache's reason.
    `entry_id` is the cache entry the answer was stored as ("" if not stored).
    `prepaid`: the spend was counted already (`Ledger.spent`, by the shared call).
    """

    tenant: str
    answer: ProviderAnswer
    lookup: Lookup | None
    route: RouteDecision
    detail: str
    started: float
    spent_usd: float
    saved_usd: float = 0.0
    entry_id: str = ""
    prepaid: bool = False


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()` reading)."""
    return (time.perf_counter() - started) * 1000.0
