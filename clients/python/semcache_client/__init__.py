"""The semcache Python client: `SemcacheClient` (blocking) and `AsyncSemcacheClient`.

    from semcache_client import SemcacheClient

    with SemcacheClient("localhost:50051", tenant="shop") as client:
        answer = client.complete("What is machine learning?")
        print(answer.content, answer.cache_status, answer.cost_saved_usd)

        stream = client.stream("Explain HNSW in one paragraph")
        for delta in stream:
            print(delta, end="")
        print(stream.answer.cache_status if stream.answer else "")

Both clients take the same arguments and have the same methods (the async
ones are awaited; `stream` returns an async iterator), built on one core.
A request's options are the keys of `RequestOptions`; a prepared request is a
`CompleteParams`; answers are frozen `Answer`s; failures raise the
`SemcacheError` tree of `semcache_client.errors`. It needs only grpcio and
protobuf.
"""

from semcache_client.aio import AsyncAnswerStream, AsyncSemcacheClient
from semcache_client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SemcacheError,
    Unauthenticated,
    Unavailable,
)
from semcache_client.sync import AnswerStream, SemcacheClient
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
    MapOptions,
    Message,
    NamespaceVerification,
    RequestOptions,
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
    "EntryScope",
    "FeedbackReceipt",
    "FeedbackVerdict",
    "InvalidArgument",
    "InvalidateFilters",
    "ItemFailure",
    "MapOptions",
    "Message",
    "NamespaceVerification",
    "NotFound",
    "PermissionDenied",
    "RequestOptions",
    "ResourceExhausted",
    "SemcacheClient",
    "SemcacheError",
    "Unauthenticated",
    "Unavailable",
    "Usage",
]
