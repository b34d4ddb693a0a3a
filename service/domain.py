"""Domain types of the request path. No gRPC and no storage details in here."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

T = TypeVar("T")


class CachePolicy(enum.Enum):
    """What the caller wants the cache to do for one request."""

    DEFAULT = "default"
    BYPASS = "bypass"
    REFRESH = "refresh"
    NO_STORE = "no_store"


class CacheStatus(enum.Enum):
    """What the cache did for one request."""

    MISS = "miss"
    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    BYPASS = "bypass"

    @property
    def is_hit(self) -> bool:
        return self in (CacheStatus.EXACT_HIT, CacheStatus.SEMANTIC_HIT)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Every request parameter that changes what the model answers."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    response_format: str | None = None
    tools_json: str | None = None
    tool_choice: str | None = None
    # The name the caller gave `max_tokens` ("max_completion_tokens" through the HTTP door),
    # sent upstream under it: OpenAI's reasoning models refuse the old name. Not in the scope.
    max_tokens_name: str = "max_tokens"


@dataclass(frozen=True)
class CompletionRequest:
    """One completion request, as the gateway sees it.

    `messages` always ends with the user's question; a bare prompt arrives as
    one user message. `deadline_s` is the caller's remaining time budget when the
    request was made (`received_at`, `time.perf_counter()`): time spent waiting
    after that, for a batch's turn say, comes off it (`remaining_s`).
    """

    messages: tuple[ChatMessage, ...]
    tenant: str = "default"
    namespace: str = "default"
    model: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache_policy: CachePolicy = CachePolicy.DEFAULT
    deadline_s: float | None = None
    ttl_s: int | None = None
    similarity_min: float | None = None
    # Raise-only strictness: the largest estimated P(wrong) a semantic hit may be
    # served at for this request; it can only tighten the namespace's error budget.
    max_error_rate: float | None = None
    # The door's id for this request (its logs, and SubmitFeedback by request id).
    request_id: str = ""
    received_at: float = field(default_factory=time.perf_counter, compare=False)

    def remaining_s(self) -> float | None:
        """What is left of the caller's deadline now; None without one."""
        if self.deadline_s is None:
            return None
        return self.deadline_s - (time.perf_counter() - self.received_at)

    def deadline_at(self) -> float:
        """The caller's deadline as a `time.perf_counter()` instant (inf without one)."""
        return math.inf if self.deadline_s is None else self.received_at + self.deadline_s

    @property
    def question(self) -> str:
        """The last user message: the text the cache matches on."""
        return self.messages[-1].content

    @property
    def system_prompt(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role == "system")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A finished answer and what it took to get it."""

    content: str
    model: str
    cache_status: CacheStatus
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    similarity: float = 0.0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    latency_ms: float = 0.0
    cache_detail: str = ""
    tool_calls_json: str = ""
    tier: str = ""
    route_reason: str = ""
    route_score: float = 0.0
    upstream_attempts: int = 0
    # The cache entry this answer was served from (a hit) or stored as (a miss); "" if none.
    entry_id: str = ""
    # A semantic hit's estimated probability (0..1) that its answer is wrong; 0 otherwise.
    error_probability: float = 0.0


class FeedbackVerdict(enum.Enum):
    """What an application says of an answer it was given."""

    CORRECT = "correct"
    WRONG = "wrong"


@dataclass(frozen=True)
class Feedback:
    """An application's verdict on one answer: by `entry_id`, `request_id`, or both.

    `request_id` names a response this replica served (its semantic hit's score is
    then known); `entry_id` alone judges the cached answer itself.
    """

    tenant: str
    verdict: FeedbackVerdict
    entry_id: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class FeedbackReceipt:
    """What SubmitFeedback recorded: the entry it applies to, and the score it was at."""

    entry_id: str
    score: float


_PLAIN_FIELDS: dict[type, frozenset[str] | None] = {}


def added_up(total: T, rows: Iterable[T]) -> T:
    """`total` with each of `rows` added to it, field by field (dataclasses of counts and
    sums, such as a tenant's counters)."""
    for row in rows:
        for name, value in vars(row).items():
            setattr(total, name, getattr(total, name) + value)
    return total


def assembled(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` for a dataclass, made without its `__init__` when `values` names
    exactly the fields `cls` has.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`, about
    0.1 us a field, and an exact hit builds a few (issue 13). Any other `values` (a
    field left to its default, a misspelt name) goes through `cls(**values)`, which
    fills defaults or raises TypeError, and so does every `values` for a class with a
    `__post_init__` or slots, which this would skip.
    """
    if cls not in _PLAIN_FIELDS:
        plain = not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
        _PLAIN_FIELDS[cls] = frozenset(f.name for f in fields(cast(Any, cls))) if plain else None
    names = _PLAIN_FIELDS[cls]
    if names is None or values.keys() != names:
        return cls(**values)
    instance = object.__new__(cls)
    vars(instance).update(values)
    return instance
