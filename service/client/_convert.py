"""Client types ⇄ protobuf messages, shared by the sync and the async client.

Everything a call does besides waiting on the network lives here (or in
`_retry`), so the two clients differ only in how they wait.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from service._proto.semcache.v1 import semcache_pb2 as pb
from service.client.types import (
    Answer,
    CachePolicy,
    CacheStats,
    CacheStatus,
    CompleteParams,
    ItemFailure,
    Message,
    Usage,
)

TENANT_KEY = "x-tenant-id"
AUTHORIZATION_KEY = "authorization"

Metadata = tuple[tuple[str, str], ...]

_POLICIES = {
    CachePolicy.DEFAULT: pb.CACHE_POLICY_DEFAULT,
    CachePolicy.BYPASS: pb.CACHE_POLICY_BYPASS,
    CachePolicy.REFRESH: pb.CACHE_POLICY_REFRESH,
    CachePolicy.NO_STORE: pb.CACHE_POLICY_NO_STORE,
}
_STATUSES = {
    pb.CACHE_STATUS_MISS: CacheStatus.MISS,
    pb.CACHE_STATUS_EXACT_HIT: CacheStatus.EXACT_HIT,
    pb.CACHE_STATUS_SEMANTIC_HIT: CacheStatus.SEMANTIC_HIT,
    pb.CACHE_STATUS_BYPASS: CacheStatus.BYPASS,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def call_metadata(tenant: str | None, api_key: str | None) -> Metadata:
    """The metadata sent with every call: the tenant and the bearer key, when set.

    Raises:
        ValueError: `tenant` or `api_key` holds a character gRPC cannot send in
            metadata (anything but printable ASCII); the message says which.
    """
    metadata: list[tuple[str, str]] = []
    if tenant is not None:
        metadata.append((TENANT_KEY, _sendable("tenant", tenant)))
    if api_key is not None:
        metadata.append((AUTHORIZATION_KEY, f"Bearer {_sendable('api_key', api_key)}"))
    return tuple(metadata)


def _sendable(name: str, value: str) -> str:
    """`value`, if gRPC can send it as a metadata value (else it fails every call
    with INTERNAL "Invalid metadata" before anything is sent)."""
    for position, char in enumerate(value):
        if not " " <= char <= "~":
            raise ValueError(
                f"{name} holds {char!r} (U+{ord(char):04X}) at position {position}: gRPC"
                " metadata must be printable ASCII; pass the value exactly as issued"
                " (`semcache keys add` prints keys of ASCII letters, digits, '-' and '_')"
            )
    return value


def _message(message: Message | tuple[str, str]) -> pb.Message:
    if isinstance(message, Message):
        return pb.Message(role=message.role, content=message.content)
    role, content = message
    return pb.Message(role=role, content=content)


def complete_request(params: CompleteParams) -> pb.CompleteRequest:
    """The CompleteRequest for `params`; optional fields stay unset when None.

    Raises:
        ValueError: `params.cache_policy` names no policy.
    """
    request = pb.CompleteRequest(
        prompt=params.prompt or "",
        messages=[_message(m) for m in params.messages or ()],
        model=params.model or "",
        namespace=params.namespace or "",
        cache_policy=_POLICIES[CachePolicy.parse(params.cache_policy)],
        stop=list(params.stop),
        response_format=params.response_format or "",
        tools_json=params.tools_json or "",
        tool_choice=params.tool_choice or "",
    )
    for name in ("temperature", "max_tokens", "ttl_s", "similarity_min", "top_p"):
        value = getattr(params, name)
        if value is not None:
            setattr(request, name, value)
    return request


def batch_request(
    requests: Sequence[CompleteParams], max_concurrency: int | None
) -> pb.BatchCompleteRequest:
    """The BatchCompleteRequest for `requests`; None concurrency leaves it to the service."""
    return pb.BatchCompleteRequest(
        requests=[complete_request(params) for params in requests],
        max_concurrency=max_concurrency or 0,
    )


def invalidate_request(
    namespace: str | None,
    model: str | None,
    older_than_s: int | None,
    all: bool,
    tenant: str | None,
    all_tenants: bool,
) -> pb.InvalidateCacheRequest:
    """The InvalidateCacheRequest for these filters (None = no filter)."""
    return pb.InvalidateCacheRequest(
        namespace=namespace or "",
        model=model or "",
        older_than_s=older_than_s or 0,
        all=all,
        tenant=tenant or "",
        all_tenants=all_tenants,
    )


def answer(response: pb.CompleteResponse) -> Answer:
    """The Answer for a CompleteResponse (or a stream's final message)."""
    usage = response.usage
    return Answer(
        content=response.content,
        model=response.model,
        cache_status=_STATUSES.get(response.cache_status, CacheStatus.UNSPECIFIED),
        similarity=response.similarity,
        latency_ms=response.latency_ms,
        usage=Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        cost_usd=response.cost_usd,
        cost_saved_usd=response.cost_saved_usd,
        finish_reason=response.finish_reason,
        request_id=response.request_id,
        tier=response.tier,
        route_reason=response.route_reason,
        route_score=response.route_score,
        cache_detail=response.cache_detail,
        upstream_attempts=response.upstream_attempts,
        tool_calls_json=response.tool_calls_json,
    )


def stream_event(event: pb.StreamCompleteResponse) -> str | Answer:
    """A text delta, or the Answer carried by a stream's final message."""
    if event.HasField("final"):
        return answer(event.final)
    return event.delta


def _item(index: int, result: pb.BatchItemResult) -> Answer | ItemFailure:
    if result.HasField("response"):
        return answer(result.response)
    code = _CODES.get(result.error.code, grpc.StatusCode.UNKNOWN)
    return ItemFailure(index, code, result.error.message)


def batch_results(response: pb.BatchCompleteResponse) -> list[Answer | ItemFailure]:
    """One Answer or ItemFailure per item, in the order the items were sent."""
    return [_item(index, result) for index, result in enumerate(response.results)]


def stats(response: pb.GetCacheStatsResponse) -> CacheStats:
    """The CacheStats for a GetCacheStatsResponse, nested tenants included."""
    return CacheStats(
        tenant=response.tenant,
        entries=response.entries,
        exact_hits=response.exact_hits,
        semantic_hits=response.semantic_hits,
        misses=response.misses,
        bypasses=response.bypasses,
        hit_rate=response.hit_rate,
        cost_saved_usd=response.cost_saved_usd,
        cost_spent_usd=response.cost_spent_usd,
        tenants=tuple(stats(nested) for nested in response.tenants),
    )
