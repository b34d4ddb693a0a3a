"""Reads `google.rpc.RetryInfo` from a failed call's `grpc-status-details-bin` trailer.

The trailer is a serialized `google.rpc.Status`: `code` (field 1), `message`
(2) and `details` (3, repeated `google.protobuf.Any`). Only `details` matters
here, so the few lines below walk the protobuf wire format for it rather than
parsing the whole Status (a whole RPC's trailer and a batch item's serialized
Status go through the same reader). `Any` and `Duration` (RetryInfo's only
field) come with protobuf itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"

_STATUS_DETAILS_FIELD = 3
_RETRY_DELAY_FIELD = 1
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(blob: bytes, at: int) -> tuple[int, int]:
    """The varint starting at `at`, and where the next field starts.

    Raises:
        DecodeError: the varint runs past the end or is longer than 64 bits.
    """
    value, shift = 0, 0
    while at < len(blob) and shift < 64:
        byte = blob[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at
    raise DecodeError("truncated or overlong varint")


def _field_end(blob: bytes, at: int, wire_type: int) -> tuple[int, int]:
    """Where the value of a field of `wire_type` starting at `at` begins and ends.

    Raises:
        DecodeError: an unknown wire type, or a value that runs past the end.
    """
    if wire_type == _VARINT:
        return at, _varint(blob, at)[1]
    if wire_type in (_FIXED64, _FIXED32):
        start, end = at, at + (8 if wire_type == _FIXED64 else 4)
    elif wire_type == _LENGTH_DELIMITED:
        size, start = _varint(blob, at)
        end = start + size
    else:
        raise DecodeError(f"unsupported wire type {wire_type}")
    if end > len(blob):
        raise DecodeError("field runs past the end of the message")
    return start, end


def _fields(blob: bytes, number: int) -> Iterator[bytes]:
    """The raw values of every field `number` of a serialized message.

    Raises:
        DecodeError: `blob` is not a well-formed protobuf message.
    """
    at = 0
    while at < len(blob):
        key, at = _varint(blob, at)
        start, at = _field_end(blob, at, key & 7)
        if key >> 3 == number:
            yield blob[start:at]


def _details_blob(trailing_metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def _retry_delay_s(status: bytes) -> float | None:
    """RetryInfo's delay in a serialized Status, or None if it has no RetryInfo.

    Raises:
        DecodeError: `status` is not a well-formed Status.
    """
    for raw in _fields(status, _STATUS_DETAILS_FIELD):
        detail = any_pb2.Any.FromString(raw)
        if detail.type_url == RETRY_INFO_TYPE_URL:
            delay = duration_pb2.Duration()
            for value in _fields(detail.value, _RETRY_DELAY_FIELD):
                delay.MergeFromString(value)
            return float(delay.seconds) + float(delay.nanos) / 1e9
    return None


def retry_after_s(trailing_metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """The server's `RetryInfo.retry_delay` in seconds, or None if it sent none (or garbage)."""
    blob = _details_blob(trailing_metadata)
    if blob is None:
        return None
    try:
        return _retry_delay_s(blob)
    except DecodeError:
        return None


def status_retry_after_s(status: bytes) -> float | None:
    """The `RetryInfo.retry_delay` in seconds inside a serialised google.rpc.Status, or None."""
    try:
        return _retry_delay_s(status)
    except DecodeError:
        return None
