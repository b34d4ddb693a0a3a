"""A streamed answer is stored only once its final message has been sent on.

The caller can go away at any moment of a stream. Whatever it had not been
sent, it did not get, so the answer must not be stored: a later asker would
be served an answer whose delivery nobody saw complete. These tests drive the
servicer's stream directly, so that "went away while the final message was
being written" happens at an exact point rather than by a race over the wire.
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


async def test_caller_gone_while_final_message_is_sent_stores_nothing(service: Service) -> None:
    messages = _stream(service).StreamComplete(pb.CompleteRequest(prompt=QUESTION), _Context())
    final = None
    async for message in messages:
        if message.HasField("final"):
            final = message.final
            break  # the write of the final message never completes
    await messages.aclose()
    assert final is not None and final.cache_status == pb.CACHE_STATUS_MISS
    assert await _status_of_next_ask(service) == pb.CACHE_STATUS_MISS


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
