"""Reading a streamed chat completion's events from its bytes (`service.llm.sse`).

The service reads the body itself instead of through the `openai` client's
reader (issue 13: that reader cost about 15 µs a chunk); these check it reads
what the client's reader reads, however the bytes are cut.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import openai
import pytest
from openai._streaming import SSEDecoder

from service.llm import sse
from service.llm.sse import BadEventError, sse_data

CHUNKS = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello, "}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "wörld\n\n:)"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
]


def _body(newline: bytes = b"\n", done: bool = True) -> bytes:
    events = [b"data: " + json.dumps(chunk).encode() for chunk in CHUNKS]
    events.insert(1, b": a comment line" + newline + b"event: message" + newline + b"id: 7")
    if done:
        events.append(b"data: [DONE]")
    return b"".join(event + newline + newline for event in events)


async def _chunks(parts: Sequence[bytes], taken: list[bytes] | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        if taken is not None:
            taken.append(part)
        yield part


async def _read(parts: Sequence[bytes]) -> list[object]:
    return [data async for data in sse_data(_chunks(parts))]


def _cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
async def test_every_chunk_is_read_however_the_bytes_are_cut(newline: bytes, size: int) -> None:
    assert await _read(_cut(_body(newline), size)) == CHUNKS


async def test_it_reads_what_the_openai_clients_reader_reads() -> None:
    body = _body(b"\r\n") + b'data: {\ndata: "a": 1}\n\n' + b'data:{"b":2}\n\n'
    theirs = [
        json.loads(event.data)
        async for event in SSEDecoder().aiter_bytes(_chunks(_cut(body, 5)))
        if event.data and not event.data.startswith("[DONE]")  # (no data: not dispatched)
    ]
    ours = await _read(_cut(body, 5))
    assert ours == theirs[: len(ours)]
    assert ours == CHUNKS  # both stop at [DONE]; what follows it is not read as events


async def test_data_lines_of_one_event_are_joined_and_other_fields_skipped() -> None:
    body = b'event: x\ndata: {"a":\ndata:  1}\nretry: 10\n\n'
    assert await _read([body]) == [{"a": 1}]


async def test_done_ends_the_events_and_the_rest_of_the_body_is_drained() -> None:
    taken: list[bytes] = []
    parts = [b'data: {"a": 1}\n\ndata: [DONE]\n\n', b'data: {"after": 1}\n\n', b"tail"]
    read = [data async for data in sse_data(_chunks(parts, taken))]
    assert read == [{"a": 1}]
    assert taken == parts  # read to its end, so the connection can be reused


async def test_a_body_that_ends_without_the_empty_line_still_gives_its_last_event() -> None:
    assert await _read([b'data: {"a": 1}\n\ndata: {"b": 2}']) == [{"a": 1}, {"b": 2}]
    assert await _read([b'data: {"a": 1}\r']) == [{"a": 1}]


async def test_an_error_event_is_raised_as_the_openai_client_raises_it() -> None:
    body = b'data: {"a": 1}\n\ndata: {"error": {"message": "model overloaded"}}\n\n'
    with pytest.raises(openai.APIError, match="model overloaded"):
        await _read([body])
    with pytest.raises(openai.APIError, match="An error occurred during streaming"):
        await _read([b'data: {"error": "busy"}\n\n'])


async def test_an_event_that_is_not_json_is_a_bad_event() -> None:
    with pytest.raises(BadEventError, match="not JSON"):
        await _read([b"data: {truncated\n\n"])


async def test_a_long_event_in_small_pieces_is_read_whole() -> None:
    chunk = {"choices": [{"delta": {"content": "x" * 20_000}}]}
    body = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    assert await _read(_cut(body, 3)) == [chunk]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": NaN, "b": Infinity}',  # json takes these, orjson does not
        b'{"s": "\\ud800"}',  # a lone surrogate
        b'\xef\xbb\xbf{"bom": 1}',  # a UTF-8 byte order mark
        b'{"delta": {"content": "caf\xc3\xa9"}, "k": [1, 2.5, true, null]}',
    ],
)
def test_an_event_reads_as_json_loads_reads_it(payload: bytes) -> None:
    expected = json.loads(payload)
    assert repr(sse.json_value(payload)) == repr(expected)


def test_an_integer_past_64_bits_is_the_one_thing_read_otherwise() -> None:
    """orjson reads it as a float (see the module's note); a token count that large
    counts as 0, as a count that is not an integer always did."""
    value = sse.json_value(b'{"n": 1180591620717411303424}')
    assert isinstance(value, dict) and isinstance(value["n"], float)
    assert value["n"] == 2.0**70


def test_events_are_parsed_by_orjson_when_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed answer is tens of events: orjson parses them, `json.loads` only what
    orjson refuses (issue 13)."""
    parsed: list[bytes] = []
    real = sse.orjson.loads

    def counted(payload: bytes) -> object:
        parsed.append(payload)
        return real(payload)

    monkeypatch.setattr(sse.orjson, "loads", counted)
    assert sse.json_value(b'{"choices": []}') == {"choices": []}
    assert parsed == [b'{"choices": []}']
    with pytest.raises(json.JSONDecodeError, match="property name"):  # json's own error
        sse.json_value(b"{not json")
