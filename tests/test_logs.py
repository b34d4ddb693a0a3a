"""Logging set-up: lines go to the stderr of the moment they are written."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog

from service.logs import configure_logging
from service.transport.grpc.core_log import quiet_ended_calls


def test_logging_outlives_the_stderr_it_was_configured_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replaced)
    configure_logging("console", "info")
    monkeypatch.undo()
    replaced.close()  # as pytest closes a test's captured stderr after the test
    try:
        structlog.get_logger("test").warning("still logging")
    finally:
        structlog.reset_defaults()
    assert "still logging" in capsys.readouterr().err


def test_a_status_grpc_could_not_send_after_the_call_ended_is_one_line_of_ours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found from outside: a call whose deadline passed just as its handler failed made
    grpc log an ERROR with a traceback, unstructured and without the request id."""
    configure_logging("json", "info")
    quiet_ended_calls()  # as the gRPC door's start does
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    try:
        raise RuntimeError('Failed "execute_batch"')
    except RuntimeError:
        with structlog.contextvars.bound_contextvars(request_id="rq-1"):
            grpc_core.error(
                "ExecuteBatchError raised in core by servicer method [/semcache.v1.S/Complete]",
                exc_info=True,
            )
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err
    (line,) = err.splitlines()
    logged = json.loads(line)
    assert logged["rpc"] == "/semcache.v1.S/Complete" and logged["request_id"] == "rq-1"
    assert logged["level"] == "info"
