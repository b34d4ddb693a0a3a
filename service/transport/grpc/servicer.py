"""gRPC ⇄ domain conversion for SemanticCacheService. No business logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.auth import require_admin, require_principal, resolve_tenant
from service.batching.deltas import join_waiting_text
from service.domain import (
    CachePolicy,
    CacheStatus,
    ChatMessage,
    Completion,
    CompletionRequest,
    Feedback,
    FeedbackVerdict,
    SamplingParams,
)
from service.errors import InvalidRequestError
from service.pipeline.admin import CacheAdmin, Invalidation, NamespaceVerification, TenantStats
from service.pipeline.request import RequestPipeline
from service.pipeline.seed import SeedScope, seeds_for
from service.transport.grpc.interceptors import (
    request_id_var,
    rpc_outcome_var,
)
from service.transport.grpc.status import item_status
from service.validation import MAX_REQUEST_ID_CHARS


@dataclass(frozen=True)
class BatchLimits:
    """Bounds on one BatchComplete call."""

    max_items: int = 256
    max_concurrency: int = 16


DEFAULT_NAMESPACE = "default"

_POLICIES: dict[int, CachePolicy] = {
    pb.CACHE_POLICY_UNSPECIFIED: CachePolicy.DEFAULT,
    pb.CACHE_POLICY_DEFAULT: CachePolicy.DEFAULT,
    pb.CACHE_POLICY_BYPASS: CachePolicy.BYPASS,
    pb.CACHE_POLICY_REFRESH: CachePolicy.REFRESH,
    pb.CACHE_POLICY_NO_STORE: CachePolicy.NO_STORE,
}
_VERDICTS: dict[int, FeedbackVerdict] = {
    pb.FEEDBACK_VERDICT_CORRECT: FeedbackVerdict.CORRECT,
    pb.FEEDBACK_VERDICT_WRONG: FeedbackVerdict.WRONG,
}
_STATUSES = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.EXACT_HIT: pb.CACHE_STATUS_EXACT_HIT,
    CacheStatus.SEMANTIC_HIT: pb.CACHE_STATUS_SEMANTIC_HIT,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant: its API key's, or in open mode its `x-tenant-id`.

    Raises:
        AuthenticationError: no caller was authenticated for this RPC.
    """
    return require_principal().tenant


def _messages(request: pb.CompleteRequest) -> tuple[ChatMessage, ...]:
    if request.prompt and request.messages:
        raise InvalidRequestError("set either prompt or messages, not both")
    if request.messages:
        return tuple(ChatMessage(m.role, m.content) for m in request.messages)
    return (ChatMessage("user", request.prompt),) if request.prompt else ()


def _policy(value: int) -> CachePolicy:
    policy = _POLICIES.get(value)
    if policy is None:
        raise InvalidRequestError(f"cache_policy {value} is not a known CachePolicy value")
    return policy


# Most requests set no sampling field; they share one (frozen) SamplingParams.
_NO_SAMPLING = SamplingParams()


def _sampling(request: pb.CompleteRequest) -> SamplingParams:
    has = request.HasField
    temperature = request.temperature if has("temperature") else None
    max_tokens = request.max_tokens if has("max_tokens") else None
    top_p = request.top_p if has("top_p") else None
    stop, response_format = request.stop, request.response_format
    tools_json, tool_choice = request.tools_json, request.tool_choice
    if (
        temperature is None
        and max_tokens is None
        and top_p is None
        and not (stop or response_format or tools_json or tool_choice)
    ):
        return _NO_SAMPLING
    return SamplingParams(
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        stop=tuple(stop),
        response_format=response_format or None,
        tools_json=tools_json or None,
        tool_choice=tool_choice or None,
    )


def to_request(
    request: pb.CompleteRequest, context: grpc.aio.ServicerContext, request_id: str | None = None
) -> CompletionRequest:
    """The domain request for a CompleteRequest, with the caller's tenant and deadline.

    `request_id` is the answer's id for feedback; None: this RPC's (the interceptor's).
    """
    has = request.HasField
    return CompletionRequest(
        messages=_messages(request),
        tenant=tenant_of(context),
        namespace=request.namespace or DEFAULT_NAMESPACE,
        model=request.model or None,
        sampling=_sampling(request),
        cache_policy=_policy(request.cache_policy),
        deadline_s=context.time_remaining(),
        ttl_s=request.ttl_s if has("ttl_s") else None,
        similarity_min=request.similarity_min if has("similarity_min") else None,
        max_error_rate=request.max_error_rate if has("max_error_rate") else None,
        request_id=request_id_var.get() if request_id is None else request_id,
    )


def to_response(completion: Completion, request_id: str | None = None) -> pb.CompleteResponse:
    """The CompleteResponse for `completion`; also notes the outcome for the RPC's metrics.

    `request_id` is the one its request carried; None: this RPC's.
    """
    rpc_outcome_var.set((completion.cache_status.value, completion.model))
    response = pb.CompleteResponse(
        content=completion.content,
        model=completion.model,
        cache_status=_STATUSES[completion.cache_status],
        similarity=completion.similarity,
        latency_ms=completion.latency_ms,
        cost_usd=completion.cost_usd,
        cost_saved_usd=completion.cost_saved_usd,
        finish_reason=completion.finish_reason,
        request_id=request_id_var.get() if request_id is None else request_id,
        cache_detail=completion.cache_detail,
        tool_calls_json=completion.tool_calls_json,
        tier=completion.tier,
        route_reason=completion.route_reason,
        route_score=completion.route_score,
        upstream_attempts=completion.upstream_attempts,
        entry_id=completion.entry_id,
        error_probability=completion.error_probability,
    )
    # Set in place: a pb.Usage argument would be built, then copied in (issue 13).
    usage, into = completion.usage, response.usage
    into.prompt_tokens = usage.prompt_tokens
    into.completion_tokens = usage.completion_tokens
    into.total_tokens = usage.total_tokens
    return response


def batch_item_id(request_id: str, index: int) -> str:
    """The request id of item `index` of a batch whose RPC is `request_id`: each item's
    answer gets its own, so feedback by request id names one answer (at most 128 chars)."""
    suffix = f".{index}"
    return request_id[: MAX_REQUEST_ID_CHARS - len(suffix)] + suffix


def _to_request_or_error(
    request: pb.CompleteRequest, context: grpc.aio.ServicerContext, request_id: str
) -> CompletionRequest | Exception:
    try:
        return to_request(request, context, request_id)
    except InvalidRequestError as error:
        return error


def _item(result: Completion | Exception, request_id: str) -> pb.BatchItemResult:
    if isinstance(result, Completion):
        return pb.BatchItemResult(response=to_response(result, request_id))
    return pb.BatchItemResult(status=item_status(result, request_id))


def to_feedback(request: pb.SubmitFeedbackRequest, tenant: str) -> Feedback:
    """The domain feedback for a SubmitFeedbackRequest, in the caller's `tenant`.

    Raises:
        InvalidRequestError: the verdict is unset or not a known FeedbackVerdict.
    """
    verdict = _VERDICTS.get(request.verdict)
    if verdict is None:
        raise InvalidRequestError(
            f"verdict is {request.verdict}; send FEEDBACK_VERDICT_CORRECT or FEEDBACK_VERDICT_WRONG"
        )
    return Feedback(
        tenant=tenant,
        verdict=verdict,
        entry_id=request.entry_id,
        request_id=request.request_id,
    )


def _put_result(result: str | Exception) -> pb.PutEntryResult:
    if isinstance(result, str):
        return pb.PutEntryResult(entry_id=result)
    return pb.PutEntryResult(status=item_status(result))


def seed_scope(request: pb.PutEntriesRequest, tenant: str) -> SeedScope:
    """The scope a PutEntriesRequest's answers stand for, in the caller's `tenant`."""
    sampling = SamplingParams(
        temperature=request.temperature if request.HasField("temperature") else None,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        top_p=request.top_p if request.HasField("top_p") else None,
    )
    return SeedScope(
        tenant=tenant,
        namespace=request.namespace or DEFAULT_NAMESPACE,
        model=request.model or None,
        system_prompt=request.system_prompt,
        sampling=sampling,
        ttl_s=request.ttl_s if request.HasField("ttl_s") else None,
    )


def _stats(stats: TenantStats) -> pb.GetCacheStatsResponse:
    return pb.GetCacheStatsResponse(**_stats_fields(stats))


def _tenant_stats(stats: TenantStats) -> pb.TenantStats:
    return pb.TenantStats(**_stats_fields(stats))


def namespace_verification(row: NamespaceVerification) -> pb.NamespaceVerification:
    """One namespace's verification counters as the proto's row."""
    counters = row.counters
    audited, low, high = counters.audited_error_rate()
    return pb.NamespaceVerification(
        namespace=row.namespace,
        requests=counters.requests,
        semantic_served=counters.semantic_served,
        expected_error_rate=counters.expected_error_rate,
        audited_error_rate=audited,
        audited_error_rate_low=low,
        audited_error_rate_high=high,
        explored=counters.explored,
        audits=counters.audits,
        audit_wrong=counters.audit_wrong,
        judged_same=counters.judged_same,
        judged_wrong=counters.judged_wrong,
        feedback_correct=counters.feedback_correct,
        feedback_wrong=counters.feedback_wrong,
    )


def _stats_fields(stats: TenantStats) -> dict[str, Any]:
    counters = stats.counters
    return dict(
        tenant=stats.tenant,
        entries=stats.entries,
        exact_hits=counters.exact_hits,
        semantic_hits=counters.semantic_hits,
        misses=counters.misses,
        bypasses=counters.bypasses,
        hit_rate=counters.hit_rate,
        cost_saved_usd=counters.cost_saved_usd,
        cost_spent_usd=counters.cost_spent_usd,
        storing_paused=not stats.store.writable,
        storing_paused_reason=stats.store.reason,
        store_missing_entries=stats.store.missing_entries,
        verification=[namespace_verification(row) for row in stats.verification],
    )


class SemanticCacheServicer(pb_grpc.SemanticCacheServiceServicer):
    """Implements semcache.v1.SemanticCacheService on the request pipeline and cache admin."""

    def __init__(
        self,
        pipeline: RequestPipeline,
        admin: CacheAdmin,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._admin = admin
        self._batch = batch_limits or BatchLimits()

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteResponse:
        completion = await self._pipeline.complete(to_request(request, context))
        return to_response(completion)

    async def StreamComplete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        events = join_waiting_text(self._pipeline.stream(to_request(request, context)))
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Completion):
                    yield pb.StreamCompleteResponse(final=to_response(event))
                else:
                    yield pb.StreamCompleteResponse(delta=event)

    async def BatchComplete(
        self, request: pb.BatchCompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCompleteResponse:
        items = request.requests
        if not items:
            raise InvalidRequestError("requests is empty: send at least one CompleteRequest")
        if len(items) > self._batch.max_items:
            raise InvalidRequestError(
                f"{len(items)} requests is more than the limit of {self._batch.max_items};"
                " split the batch"
            )
        if request.max_concurrency < 0:
            raise InvalidRequestError("max_concurrency must be 0 (the default) or positive")
        limit = self._batch.max_concurrency
        concurrency = min(request.max_concurrency or limit, limit)
        ids = [batch_item_id(request_id_var.get(), index) for index in range(len(items))]
        domain = [
            _to_request_or_error(item, context, i) for item, i in zip(items, ids, strict=True)
        ]
        valid = [d for d in domain if isinstance(d, CompletionRequest)]
        answers = iter(await self._pipeline.complete_many(valid, concurrency))
        results = [
            _item(d if isinstance(d, Exception) else next(answers), i)
            for d, i in zip(domain, ids, strict=True)
        ]
        # Each item's lookup was counted where it happened; the RPC has no one outcome.
        rpc_outcome_var.set(("none", ""))
        return pb.BatchCompleteResponse(results=results)

    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCacheStatsResponse:
        principal = require_principal()
        namespace = request.namespace or None
        response = _stats(await self._admin.tenant_stats(principal.tenant, namespace))
        if request.all_tenants:
            require_admin(principal, "stats for all tenants")
            for tenant in await self._admin.tenants():
                stats = await self._admin.tenant_stats(tenant, namespace)
                response.tenants.append(_tenant_stats(stats))
        return response

    async def InvalidateCache(
        self, request: pb.InvalidateCacheRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateCacheResponse:
        principal = require_principal()
        if request.all_tenants:
            require_admin(principal, "invalidating every tenant's cache")
            if request.tenant:
                raise InvalidRequestError(
                    "send tenant (that tenant's entries) or all_tenants (every tenant's), not both"
                )
        tenant = None if request.all_tenants else resolve_tenant(principal, request.tenant or None)
        deleted = await self._admin.invalidate(
            Invalidation(
                tenant=tenant,
                namespace=request.namespace or None,
                model=request.model or None,
                older_than_s=float(request.older_than_s),
                everything=request.all,
            )
        )
        return pb.InvalidateCacheResponse(deleted_entries=deleted)

    async def DeleteEntry(
        self, request: pb.DeleteEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteEntryResponse:
        principal = require_principal()
        tenant = None if principal.is_admin else principal.tenant
        deleted = await self._admin.delete_entry(tenant, request.entry_id)
        return pb.DeleteEntryResponse(deleted=deleted)

    async def PutEntries(
        self, request: pb.PutEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutEntriesResponse:
        scope = seed_scope(request, require_principal().tenant)
        pairs = [(entry.question, entry.answer) for entry in request.entries]
        results = await self._admin.put_entries(seeds_for(scope, pairs))
        rpc_outcome_var.set(("none", ""))
        return pb.PutEntriesResponse(results=[_put_result(r) for r in results])

    async def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitFeedbackResponse:
        feedback = to_feedback(request, require_principal().tenant)
        receipt = await self._admin.submit_feedback(feedback)
        return pb.SubmitFeedbackResponse(entry_id=receipt.entry_id, score=receipt.score)
