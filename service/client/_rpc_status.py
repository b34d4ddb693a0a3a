"""Reads `google.rpc.RetryInfo` from a failed call's `grpc-status-details-bin` trailer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _details_blob(trailing_metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def retry_after_s(trailing_metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """The server's `RetryInfo.retry_delay` in seconds, or None if it sent none (or garbage)."""
    blob = _details_blob(trailing_metadata)
    if blob is None:
        return None
    try:
        status = Status.FromString(blob)
    except DecodeError:
        return None
    for detail in status.details:
        info = RetryInfo()
        if detail.Unpack(info):
            delay = info.retry_delay
            return float(delay.seconds) + float(delay.nanos) / 1e9
    return None
