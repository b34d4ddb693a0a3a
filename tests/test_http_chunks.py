"""The chunks of a streamed answer at the HTTP door, as the OpenAI SDKs read them."""

from __future__ import annotations

import json

from service.domain import CacheStatus, Completion
from service.transport.http.replies import ChunkWriter


def _event(raw: bytes) -> dict[str, object]:
    text = raw.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    parsed = json.loads(text.removeprefix("data: "))
    assert isinstance(parsed, dict)
    return parsed


def test_an_unsaid_finish_reason_is_null_in_the_last_chunk_as_in_a_unary_reply() -> None:
    """Found from outside: a stream its provider closed without a finish reason ended
    with `"finish_reason": ""`, where the unary reply and the README say null."""
    writer = ChunkWriter("r1", "m", include_usage=False)
    writer.delta("Half an ans")
    unsaid = Completion("Half an ans", "m", CacheStatus.MISS, finish_reason="")
    choice = _event(writer.final(unsaid))["choices"][0]  # type: ignore[index]
    assert choice["finish_reason"] is None
    said = Completion("Done.", "m", CacheStatus.MISS, finish_reason="stop")
    assert _event(writer.final(said))["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
