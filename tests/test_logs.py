"""Logging set-up: lines go to the stderr of the moment they are written."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from service.logs import configure_logging


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
