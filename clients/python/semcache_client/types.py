"""What a semcache client sends and gets back, as plain frozen dataclasses.

No gRPC in here: `_convert` turns these into protobuf messages and back.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import grpc

from semcache_client.errors import ResourceExhausted, SemcacheError, error_for


class CachePolicy(enum.Enum):
    """What the cache may do for one request (see the README's cache_policy table)."""

    DEFAULT = "default"  # look up, and store the answer on a miss
    BYPASS = "bypass"  # neither look up nor store
    REFRESH = "refresh"  # skip the lookup, ask the provider, replace the cached answer
    NO_STORE = "no_store"  # look up, but never store this answer

    @classmethod
    def parse(cls, value: CachePolicy | str) -> CachePolicy:
        """`value` as a policy; strings may use `-` or `_` ("no-store", "no_store").

        Raises:
            ValueError: `value` names no policy.
        """
        if isinstance(value, CachePolicy):
            return value
        if not isinstance(value, str):
            names = ", ".join(policy.value for policy in cls)
            raise ValueError(f"cache_policy must be one of {names}, not {value!r}")
        try:
            return cls(value.strip().lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(policy.value for policy in cls)
            raise ValueError(f"unknown cache_policy {value!r}: use one of {names}") from None


class CacheStatus(enum.Enum):
    """What the cache did for one request."""

    MISS = "miss"  # the provider answered
    EXACT_HIT = "exact_hit"  # the same normalised question was cached in the same scope
    SEMANTIC_HIT = "semantic_hit"  # a question close enough in meaning was cached
    BYPASS = "bypass"  # the caller asked to bypass the cache
    UNSPECIFIED = "unspecified"  # the server did not say (a server older or newer than this client)


@dataclass(frozen=True)
class Message:
    """One chat message; `role` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Usage:
    """Token counts of the upstream call (for a hit: of the call that produced the answer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Answer:
    """One completion and what the cache and the provider did to produce it.

    `similarity` is cosine similarity to the cached question (1.0 for an exact
    hit; on a miss that of the nearest candidate refused, 0 if none, with the
    reason in `cache_detail`); `latency_ms` is time inside the service; `cost_usd` is
    what this request cost upstream and `cost_saved_usd` what a hit saved.
    `entry_id` is the cache entry it was served from or stored as ("" if
    none); `delete_entry(entry_id)` removes that entry, and `submit_feedback`
    judges it (by `entry_id` or `request_id`). `error_probability` is a
    semantic hit's estimated probability (0 to 1) that its answer is wrong (0
    for any other answer).
    """

    content: str
    model: str
    cache_status: CacheStatus
    similarity: float
    latency_ms: float
    usage: Usage
    cost_usd: float
    cost_saved_usd: float
    finish_reason: str
    request_id: str
    tier: str = ""
    route_reason: str = ""
    route_score: float = 0.0
    cache_detail: str = ""
    upstream_attempts: int = 0
    tool_calls_json: str = ""
    entry_id: str = ""
    error_probability: float = 0.0

    @property
    def is_hit(self) -> bool:
        """True when the answer came from the cache (an exact or a semantic hit)."""
        return self.cache_status in (CacheStatus.EXACT_HIT, CacheStatus.SEMANTIC_HIT)


class RequestOptions(TypedDict, total=False):
    """The options of one completion, as keyword arguments of `complete` and `stream`.

    Declared once, here: `complete`, `stream` (sync and async) take them as
    `**options`, and `CompleteParams` has the same fields plus `prompt`. An
    option left out (or None) is left to the service: `model` (the service
    chooses), `temperature`, `max_tokens`, `top_p` (the provider's defaults),
    `namespace` ("default"), `ttl_s` (`SEMCACHE_TTL_S`, in seconds),
    `similarity_min` (cosine similarity, 0 to 1: the service's floor, which a
    request can only raise), `max_error_rate` (the largest estimated
    probability, 0 to 1, that a semantic hit is wrong at which it may be
    served: it can only tighten the service's `SEMCACHE_MAX_ERROR_RATE`).
    `messages` replaces the prompt with a
    conversation ending with a user message (each a `Message`, a (role, content)
    pair or an OpenAI-style {"role", "content"} dict); `cache_policy` defaults to
    `CachePolicy.DEFAULT`; `stop` is one stop sequence or at most 4 of them;
    `response_format` is "text" or "json_object"; `tools_json` and
    `tool_choice` pass OpenAI-style tools through to the provider.
    """

    messages: Sequence[Message | tuple[str, str] | Mapping[str, str]] | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    namespace: str | None
    cache_policy: CachePolicy | str
    ttl_s: int | None
    similarity_min: float | None
    max_error_rate: float | None
    top_p: float | None
    stop: str | Sequence[str]
    response_format: str | None
    tools_json: str | None
    tool_choice: str | None


@dataclass(frozen=True)
class CompleteParams:
    """One completion request, as `batch_complete`, `map_reduce` and `complete_with` take it.

    A prompt and the `RequestOptions` (see there for what each means and what
    None leaves to the service); set exactly one of `prompt` or `messages`.
    The clients build one with `CompleteParams(prompt, **options)`, which
    mypy checks against `RequestOptions`, and a test checks the field names.
    """

    prompt: str | None = None
    messages: Sequence[Message | tuple[str, str] | Mapping[str, str]] | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    namespace: str | None = None
    cache_policy: CachePolicy | str = CachePolicy.DEFAULT
    ttl_s: int | None = None
    similarity_min: float | None = None
    max_error_rate: float | None = None
    top_p: float | None = None
    stop: str | Sequence[str] = ()
    response_format: str | None = None
    tools_json: str | None = None
    tool_choice: str | None = None


class MapOptions(TypedDict, total=False):
    """How `map_reduce` sends its prompts (every key optional).

    `template`: the other fields of every request (model, namespace,
    sampling...), its prompt and messages replaced; `max_concurrency`: items
    the service runs at once (None: its default); `batch_size`: items per
    BatchComplete call (default 64, under the service's
    `SEMCACHE_BATCH_MAX_ITEMS`); `skip_failures`: drop failed items instead
    of raising the first (default False); `timeout_s`: the deadline of each
    BatchComplete call (default: the client's).
    """

    template: CompleteParams | None
    max_concurrency: int | None
    batch_size: int
    skip_failures: bool
    timeout_s: float | None


class InvalidateFilters(TypedDict, total=False):
    """Which cached entries `invalidate` deletes: those matching every filter given.

    `namespace`, `model`: entries of that namespace or model; `older_than_s`:
    entries stored more than that many seconds ago; `all=True` (and no
    filter) every entry of the tenant; `tenant` another tenant's entries and
    `all_tenants` every tenant's (both admin only).
    """

    namespace: str | None
    model: str | None
    older_than_s: int | None
    all: bool
    tenant: str | None
    all_tenants: bool


class EntryScope(TypedDict, total=False):
    """The requests `put_entries`' answers stand for: an entry is served only in its scope.

    `namespace` (default "default"), `ttl_s` (seconds; `SEMCACHE_TTL_S` if
    unset), `model` (None: the "auto" scope of requests that leave the model to
    the service), and the `system_prompt`, `temperature`, `top_p` and
    `max_tokens` of those requests.
    """

    namespace: str | None
    ttl_s: int | None
    model: str | None
    system_prompt: str | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None


@dataclass(frozen=True)
class ItemFailure:
    """Why item `index` of a batch failed: a gRPC status code and the server's message.

    `retry_after_s` is when the server said to retry (a rate-limited or
    overloaded item's RetryInfo), else None.
    """

    index: int
    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None

    def error(self) -> SemcacheError:
        """This failure as the client error a single call would have raised.

        A rate-limited item is a `ResourceExhausted` with the item's `retry_after_s`.
        """
        message = f"batch item {self.index}: {self.message}"
        if self.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(self.code, message, self.retry_after_s)
        return error_for(self.code, message)


FeedbackVerdict = Literal["correct", "wrong"]


@dataclass(frozen=True)
class FeedbackReceipt:
    """What `submit_feedback` recorded: the entry judged, and the guard score it was
    served at (1.0 when judged by `entry_id` alone, or for an exact hit)."""

    entry_id: str
    score: float


@dataclass(frozen=True)
class NamespaceVerification:
    """What the error-budget decision saw in one namespace, on the answering replica.

    Error rates are wrong answers / requests: `expected_error_rate` is the
    decision's own estimate; `audited_error_rate` (with its 95% interval
    `audited_error_rate_low` to `audited_error_rate_high`) comes from random
    audits judged against fresh answers. `explored` counts the upstream calls
    spent judging uncertain candidates (`audits` of them at random);
    `judged_same` and `judged_wrong` are the judge's verdicts; `feedback_*`
    count `submit_feedback` verdicts.
    """

    namespace: str
    requests: int
    semantic_served: int
    expected_error_rate: float
    audited_error_rate: float
    audited_error_rate_low: float
    audited_error_rate_high: float
    explored: int
    audits: int
    audit_wrong: int
    judged_same: int
    judged_wrong: int
    feedback_correct: int
    feedback_wrong: int


@dataclass(frozen=True)
class CacheStats:
    """Cache counters of one tenant; `tenants` holds every tenant's (admin, `all_tenants`).

    `entries` counts live cached answers; the hit and miss counters are the
    answering replica's since it started; `verification` has a row per namespace
    the error-budget decision has seen. `storing_paused`: the store takes no
    new entries (`storing_paused_reason` says why, e.g. the disk is nearly
    full, or the store could not be opened; lookups still answer from what is
    stored); `store_missing_entries`: entries the store lacked when this
    replica opened it (a damaged store; 0 normally).
    """

    tenant: str
    entries: int
    exact_hits: int
    semantic_hits: int
    misses: int
    bypasses: int
    hit_rate: float
    cost_saved_usd: float
    cost_spent_usd: float
    tenants: tuple[CacheStats, ...] = field(default=())
    verification: tuple[NamespaceVerification, ...] = field(default=())
    storing_paused: bool = False
    storing_paused_reason: str = ""
    store_missing_entries: int = 0
