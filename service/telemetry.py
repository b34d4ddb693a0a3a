"""One handle for the request path's observability: Prometheus metrics and optional spans."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.metrics import Metrics
from service.tracing import Tracing


class Telemetry:
    """`stage(name)` times a stage into the metrics and, when tracing is on, opens a span."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as stage `name` ("embed", "lookup", "route", "upstream", ...)."""
        with self.tracing.span(name), self.metrics.timed_stage(name):
            yield
