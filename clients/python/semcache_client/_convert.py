"""Client types ⇄ protobuf messages, shared by the sync and the async client.

Pure functions: no channel, no waiting. `_core` pairs each request built
here with the function that reads its response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc.status_pb2 import Status

from semcache_client._proto.semcache.v1 import semcache_pb2 as pb
from semcache_client._rpc_status import status_retry_after_s
from semcache_client.types import (
    Answer,
    CachePolicy,
    CacheStats,
    CacheStatus,
    CompleteParams,
    EntryScope,
    FeedbackReceipt,
    FeedbackVerdict,
    InvalidateFilters,
    ItemFailure,
    Message,
    NamespaceVerification,
    Usage,
)

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
_VERDICTS = {"correct": pb.FEEDBACK_VERDICT_CORRECT, "wrong": pb.FEEDBACK_VERDICT_WRONG}
_VERIFICATION_FIELDS = tuple(
    f.name for f in pb.NamespaceVerification.DESCRIPTOR.fields if f.name != "namespace"
)


def _message(message: Message | tuple[str, str] | Mapping[str, str]) -> pb.Message:
    """A `Message`, a (role, content) pair or an OpenAI-style {"role", "content"} dict.

    Raises:
        TypeError: it is none of these (a dict once unpacked as its keys).
    """
    if isinstance(message, Message):
        return pb.Message(role=message.role, content=message.content)
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    elif isinstance(message, tuple | list) and len(message) == 2:
        role, content = message
    else:
        role = content = None
    if not isinstance(role, str) or not isinstance(content, str):
        raise TypeError(
            "a message is a Message, a (role, content) pair of strings or a"
            f' {{"role": ..., "content": ...}} dict of strings, not {message!r:.80}'
        )
    return pb.Message(role=role, content=content)


_TEXT_FIELDS = ("prompt", "model", "namespace", "response_format", "tools_json", "tool_choice")
_OPTIONAL_FIELDS = (
    "temperature", "max_tokens", "ttl_s", "similarity_min", "max_error_rate", "top_p"
)  # fmt: skip


def complete_request(params: CompleteParams) -> pb.CompleteRequest:
    """The CompleteRequest for `params`; optional fields stay unset when None.

    Raises:
        ValueError: `params.cache_policy` names no policy, or an option's value is not
            of its type or outside what the message can carry (the message names it).
    """
    request = pb.CompleteRequest(
        messages=[_message(m) for m in params.messages or ()],
        cache_policy=_POLICIES[CachePolicy.parse(params.cache_policy)],
    )
    for name in _TEXT_FIELDS:
        _set(request, name, getattr(params, name) or "")
    stop = [params.stop] if isinstance(params.stop, str) else params.stop
    try:
        request.stop.extend(stop)
    except (TypeError, ValueError) as error:
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r:.80}") from error
    for name in _OPTIONAL_FIELDS:
        value = getattr(params, name)
        if value is not None:
            _set(request, name, value)
    return request


def _set(request: pb.CompleteRequest | pb.PutEntriesRequest, name: str, value: object) -> None:
    """`request.name = value`, with protobuf's bare complaint turned into one naming the field.

    Raises:
        ValueError: `value` is not of the field's type (a float for an integer, a number
            for a string) or out of its range.
    """
    try:
        setattr(request, name, value)
    except (TypeError, ValueError) as error:
        field = request.DESCRIPTOR.fields_by_name[name]
        kind = {
            field.TYPE_STRING: "a string",
            field.TYPE_DOUBLE: "a number",
            field.TYPE_INT32: f"a whole number below {2**31}",
        }.get(field.type, f"a whole number below {2**63}")
        raise ValueError(f"{name} must be {kind}, got {value!r:.80} ({error})") from error


def batch_request(
    requests: Sequence[CompleteParams], max_concurrency: int | None
) -> pb.BatchCompleteRequest:
    """The BatchCompleteRequest for `requests`; None concurrency leaves it to the service."""
    return pb.BatchCompleteRequest(
        requests=[complete_request(params) for params in requests],
        max_concurrency=max_concurrency or 0,
    )


def _known_keys(what: str, given: Mapping[str, object], allowed: type) -> None:
    """Refuse a keyword the TypedDict `allowed` does not name: a misspelt filter that were
    dropped would widen what the call does (`namespce=` on invalidate clears the tenant).

    Raises:
        TypeError: `given` has a key `allowed` does not declare.
    """
    known = allowed.__required_keys__ | allowed.__optional_keys__  # type: ignore[attr-defined]
    unknown = sorted(set(given) - known)
    if unknown:
        names = ", ".join(sorted(known))
        raise TypeError(f"{what} got unknown keyword {', '.join(unknown)}; use {names}")


def invalidate_request(filters: InvalidateFilters) -> pb.InvalidateCacheRequest:
    """The InvalidateCacheRequest for these filters (absent or None: no filter).

    Raises:
        TypeError: a filter the call does not know (a misspelling).
    """
    _known_keys("invalidate()", filters, InvalidateFilters)
    return pb.InvalidateCacheRequest(
        namespace=filters.get("namespace") or "",
        model=filters.get("model") or "",
        older_than_s=filters.get("older_than_s") or 0,
        all=filters.get("all", False),
        tenant=filters.get("tenant") or "",
        all_tenants=filters.get("all_tenants", False),
    )


def put_entries_request(
    entries: Sequence[tuple[str, str]], scope: EntryScope
) -> pb.PutEntriesRequest:
    """The PutEntriesRequest for (question, answer) pairs in `scope`.

    Raises:
        TypeError: a scope field the call does not know (a misspelling).
        ValueError: a scope value not of its field's type, or out of its range.
    """
    _known_keys("put_entries()", scope, EntryScope)
    request = pb.PutEntriesRequest(
        entries=[pb.Entry(question=question, answer=text) for question, text in entries]
    )
    for name in ("namespace", "model", "system_prompt"):
        _set(request, name, scope.get(name) or "")
    for name in ("ttl_s", "temperature", "top_p", "max_tokens"):
        if (value := scope.get(name)) is not None:
            _set(request, name, value)
    return request


def put_results(response: pb.PutEntriesResponse) -> list[str | ItemFailure]:
    """The entry id, or an ItemFailure, of each entry, in the order they were sent."""
    return [_put_result(index, result) for index, result in enumerate(response.results)]


def _put_result(index: int, result: pb.PutEntryResult) -> str | ItemFailure:
    if result.HasField("entry_id"):
        return result.entry_id
    return _failure(index, result.status)


def stats_request(namespace: str | None, all_tenants: bool) -> pb.GetCacheStatsRequest:
    """The GetCacheStatsRequest for the caller's tenant (one namespace, or every tenant)."""
    return pb.GetCacheStatsRequest(namespace=namespace or "", all_tenants=all_tenants)


def deleted_entries(response: pb.InvalidateCacheResponse) -> int:
    """How many entries an InvalidateCache call deleted."""
    return int(response.deleted_entries)


def entry_deleted(response: pb.DeleteEntryResponse) -> bool:
    """Whether a DeleteEntry call deleted its entry."""
    return bool(response.deleted)


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
        entry_id=response.entry_id,
        error_probability=response.error_probability,
    )


def stream_event(event: pb.StreamCompleteResponse) -> str | Answer:
    """A text delta, or the Answer carried by a stream's final message."""
    if event.HasField("final"):
        return answer(event.final)
    return event.delta


def _item(index: int, result: pb.BatchItemResult) -> Answer | ItemFailure:
    if result.HasField("response"):
        return answer(result.response)
    return _failure(index, result.status)


def batch_results(response: pb.BatchCompleteResponse) -> list[Answer | ItemFailure]:
    """One Answer or ItemFailure per item, in the order the items were sent."""
    return [_item(index, result) for index, result in enumerate(response.results)]


def _failure(index: int, status: Status) -> ItemFailure:
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    retry_after_s = status_retry_after_s(status.SerializeToString())
    return ItemFailure(index, code, status.message, retry_after_s)


def stats(response: pb.GetCacheStatsResponse | pb.TenantStats) -> CacheStats:
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
        tenants=tuple(stats(nested) for nested in getattr(response, "tenants", ())),
        verification=tuple(_verification(row) for row in response.verification),
        storing_paused=response.storing_paused,
        storing_paused_reason=response.storing_paused_reason,
        store_missing_entries=response.store_missing_entries,
    )


def _verification(row: pb.NamespaceVerification) -> NamespaceVerification:
    values = {name: getattr(row, name) for name in _VERIFICATION_FIELDS}
    return NamespaceVerification(namespace=row.namespace, **values)


def feedback_request(
    entry_id: str | None, request_id: str | None, verdict: FeedbackVerdict
) -> pb.SubmitFeedbackRequest:
    """The SubmitFeedbackRequest for a verdict on an answer.

    Raises:
        ValueError: `verdict` is not "correct" or "wrong", or neither id is given.
    """
    value = _VERDICTS.get(str(verdict).strip().lower())
    if value is None:
        raise ValueError(f'unknown verdict {verdict!r}: use "correct" or "wrong"')
    if not entry_id and not request_id:
        raise ValueError("give the entry_id or the request_id of an Answer")
    return pb.SubmitFeedbackRequest(
        entry_id=entry_id or "", request_id=request_id or "", verdict=value
    )


def feedback_receipt(response: pb.SubmitFeedbackResponse) -> FeedbackReceipt:
    """What a SubmitFeedback call recorded."""
    return FeedbackReceipt(entry_id=response.entry_id, score=response.score)
