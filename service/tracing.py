"""Optional OpenTelemetry tracing: one span per stage (embed, lookup, route, upstream, ...).

Off by default: `Tracing()` makes every `span` a no-op and needs no
OpenTelemetry package. `build_tracing(otlp_endpoint)` turns it on and sends
spans over OTLP/gRPC. The tracer provider is this object's own, never
OpenTelemetry's global one, so several services (and tests) can coexist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from service.errors import StartupError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

AttributeValue = str | bool | int | float


class Tracing:
    """Spans around the request path's stages; no-ops unless given a tracer provider."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("semcache") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(self, name: str, **attributes: AttributeValue) -> Iterator[None]:
        """Trace the body as span `name`, a child of the span around it; an error marks it."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, attributes=attributes):
            yield

    def close(self) -> None:
        """Send the spans still buffered and stop exporting (blocks while flushing)."""
        if self._provider is not None:
            self._provider.shutdown()

    async def aclose(self) -> None:
        """`close`, off the event loop."""
        await asyncio.to_thread(self.close)


def tracing_with_exporter(
    exporter: SpanExporter, service_name: str = "semcache", batch: bool = True
) -> Tracing:
    """Tracing that hands finished spans to `exporter` (batched, or one by one for tests)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
    )
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Tracing(provider)


def build_tracing(otlp_endpoint: str | None, service_name: str = "semcache") -> Tracing:
    """No-op tracing when `otlp_endpoint` is unset, else spans sent there over OTLP/gRPC.

    An `http://` endpoint is plaintext, anything else uses TLS.

    Raises:
        StartupError: tracing is on but `opentelemetry-sdk` or
            `opentelemetry-exporter-otlp-proto-grpc` is not installed.
    """
    if not otlp_endpoint:
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as error:  # found from outside: a traceback, not what to install
        raise StartupError(
            f"SEMCACHE_OTLP_ENDPOINT is set but {error.name or 'opentelemetry'} is not"
            " installed: pip install '.[tracing]' (the tracing extra), or unset"
            " SEMCACHE_OTLP_ENDPOINT"
        ) from None

    exporter = OTLPSpanExporter(
        endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http://"), timeout=10
    )
    return tracing_with_exporter(exporter, service_name)
