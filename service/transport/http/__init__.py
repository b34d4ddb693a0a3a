"""The OpenAI-compatible HTTP door (aiohttp) onto the request pipeline, and the live page.

Imports nothing of gRPC. Start it with `start_http_server` (or
`start_http_from_settings`) beside the gRPC server, on the same event loop.
"""

from service.transport.http.server import (
    RunningHttpServer,
    build_http_app,
    start_http_from_settings,
    start_http_server,
)

__all__ = ["RunningHttpServer", "build_http_app", "start_http_from_settings", "start_http_server"]
