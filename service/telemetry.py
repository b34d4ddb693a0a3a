"""One handle for the request path's observability: Prometheus metrics and optional spans."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType

from service.metrics import Metrics
from service.tracing import Tracing


class Telemetry:
    """`stage(name)` times a stage into the metrics and, when tracing is on, opens a span."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing()

    def stage(self, name: str) -> _Stage:
        """Time the body as stage `name` ("embed", "lookup", "route", "upstream", ...),
        recorded whether or not it raises."""
        span = self.tracing.span(name) if self.tracing.enabled else None
        return _Stage(self.metrics, name, span)


class _Stage:
    """One timed stage: a plain object rather than two generator-based context
    managers, and no span at all when tracing is off (every exact hit times one
    stage; issue 13)."""

    __slots__ = ("_metrics", "_name", "_span", "_started")

    def __init__(
        self, metrics: Metrics, name: str, span: AbstractContextManager[None] | None
    ) -> None:
        self._metrics = metrics
        self._name = name
        self._span = span
        self._started = 0.0

    def __enter__(self) -> None:
        if self._span is not None:
            self._span.__enter__()
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._metrics.observe_stage(self._name, time.perf_counter() - self._started)
        if self._span is not None:
            return self._span.__exit__(kind, error, traceback)
        return None
