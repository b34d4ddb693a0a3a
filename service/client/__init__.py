"""Python clients for semcache: `SemcacheClient` (blocking) and `AsyncSemcacheClient`.

    from service.client import SemcacheClient

    with SemcacheClient("localhost:50051", tenant="shop") as client:
        answer = client.complete("What is machine learning?")
        print(answer.content, answer.cache_status, answer.cost_saved_usd)

        stream = client.stream("Explain HNSW in one paragraph")
        for delta in stream:
            print(delta, end="")
        print(stream.answer.cache_status if stream.answer else "")

Both clients take the same arguments and have the same methods (the async
ones are awaited; `stream` returns an async iterator). Requests are plain
dataclasses (`CompleteParams`, `Message`), answers are frozen `Answer`s, and
failures raise the `SemcacheError` tree of `service.client.errors`.
"""

from service.client.aio import AsyncAnswerStream, AsyncSemcacheClient
from service.client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    SemcacheError,
    Unauthenticated,
    Unavailable,
)
from service.client.sync import AnswerStream, SemcacheClient
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

__all__ = [
    "Answer",
    "AnswerStream",
    "AsyncAnswerStream",
    "AsyncSemcacheClient",
    "CachePolicy",
    "CacheStats",
    "CacheStatus",
    "CompleteParams",
    "DeadlineExceeded",
    "InvalidArgument",
    "ItemFailure",
    "Message",
    "PermissionDenied",
    "ResourceExhausted",
    "SemcacheClient",
    "SemcacheError",
    "Unauthenticated",
    "Unavailable",
    "Usage",
]
