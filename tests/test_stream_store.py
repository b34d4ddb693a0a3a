"""A streamed answer is stored once the provider's stream ends whole, before the
final message names its `entry_id`; a caller gone before then stores nothing.

Until 2026-12-01 the answer was stored only after the final message had been
sent on, so the id in that message could name nothing: a SIGKILL just after the
caller had it lost the entry (3 of 3 tries, from outside), and feedback or
DeleteEntry by that id raced the write (NOT_FOUND in 3 of 20), where a unary
answer's id is only ever sent once stored. These tests drive the servicer's
stream directly, so that "went away while the final message was being
written" happens at an exact point rather than by a race over the wire.
"""

from __future__ import annotations

from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import Principal, current_principal
from service.transport.grpc.servicer import SemanticCacheServicer
from tests.conftest import Service

QUESTION = "What is machine learning?"


class _Context:
    """The one thing `to_request` asks of a gRPC context: the deadline."""

    def time_remaining(self) -> float | None:
        return None


def _stream(service: Service) -> SemanticCacheServicer:
    current_principal.set(Principal(tenant="default", role="admin", key_name="test"))
    return SemanticCacheServicer(service.app.pipeline, service.app.admin)


async def _status_of_next_ask(service: Service) -> int:
    again = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    return int(again.cache_status)


async def test_the_final_message_names_an_entry_already_stored(service: Service) -> None:
    messages = _stream(service).StreamComplete(pb.CompleteRequest(prompt=QUESTION), _Context())
    final = None
    async for message in messages:
        if message.HasField("final"):
            final = message.final
            break  # the write of the final message never completes
    assert final is not None and final.cache_status == pb.CACHE_STATUS_MISS
    assert final.entry_id
    stored = await service.app.cache.store.get(final.entry_id)  # before the stream closes
    await messages.aclose()
    assert stored is not None
    assert await _status_of_next_ask(service) == pb.CACHE_STATUS_EXACT_HIT


async def test_caller_gone_after_first_delta_stores_nothing(service: Service) -> None:
    messages = _stream(service).StreamComplete(pb.CompleteRequest(prompt=QUESTION), _Context())
    first = await anext(messages)
    assert first.delta
    await messages.aclose()
    assert await _status_of_next_ask(service) == pb.CACHE_STATUS_MISS


async def test_stream_read_to_the_end_is_stored(service: Service) -> None:
    messages = _stream(service).StreamComplete(pb.CompleteRequest(prompt=QUESTION), _Context())
    text = [m.delta async for m in messages if not m.HasField("final")]
    assert text
    assert await _status_of_next_ask(service) == pb.CACHE_STATUS_EXACT_HIT


async def test_a_stream_cut_short_is_still_charged(service: Service) -> None:
    """Found from outside: a stream the caller left (or the provider broke off) was
    counted nowhere, neither as spend nor against the tenant's token limit, though the
    provider bills what it generated. Its usage is now estimated from what came."""
    messages = _stream(service).StreamComplete(pb.CompleteRequest(prompt=QUESTION), _Context())
    first = await anext(messages)
    assert first.delta
    await messages.aclose()
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert stats.cost_spent_usd > 0
    tokens = service.app.metrics.registry.get_sample_value(
        "semcache_tokens_total", {"tenant": "default", "model": "gpt-4o-mini", "kind": "completion"}
    )
    assert tokens is not None and tokens > 0
