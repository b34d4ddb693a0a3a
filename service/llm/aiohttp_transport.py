"""`AiohttpTransport`: the `openai` client's HTTP requests sent by aiohttp.

The client stays `openai.AsyncOpenAI` (its auth, base URL, timeouts, status
errors); only the last hop, bytes on the wire, is aiohttp's instead of
httpcore's, which costs about half as much per call. Failures are raised as
the httpx exceptions httpcore would raise, so the client turns them into the
same errors: a timeout into `openai.APITimeoutError`, a refused or lost
connection into `openai.APIConnectionError` (the SDK's own aiohttp adapter
reports a refused connection as a timeout, which the resilience layer would
not count against the provider's breaker).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx2
import yarl
from aiohttp.helpers import get_env_proxy_for_url

# The SDK's own pool bounds (openai._constants.DEFAULT_CONNECTION_LIMITS) and
# httpx's keep-alive expiry.
MAX_CONNECTIONS = 1000
KEEPALIVE_S = 5.0
LARGE_BODY_BYTES = 1 << 20  # aiohttp's bound for sending raw bytes in one piece


_Proxy = tuple[str | None, aiohttp.BasicAuth | None]


@contextlib.contextmanager
def _as_httpx_errors(request: httpx2.Request) -> Iterator[None]:
    """aiohttp's and the socket's failures as the httpx errors the openai client maps."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as error:
        raise httpx2.ConnectTimeout(str(error), request=request) from error
    except TimeoutError as error:  # a read or the pool timed out
        raise httpx2.ReadTimeout(str(error) or "timed out", request=request) from error
    except aiohttp.ClientConnectorError as error:
        raise httpx2.ConnectError(str(error), request=request) from error
    except aiohttp.ClientPayloadError as error:
        raise httpx2.ReadError(str(error), request=request) from error
    except (aiohttp.ClientError, OSError) as error:
        message = str(error) or type(error).__name__
        raise httpx2.RemoteProtocolError(message, request=request) from error


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    """The request body as aiohttp takes it: a large one as a file, which aiohttp sends
    without holding the event loop (and without warning that raw bytes would)."""
    if not body:
        return None
    return io.BytesIO(body) if len(body) >= LARGE_BODY_BYTES else body


class _Body(httpx2.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing it frees the connection
    (aiohttp closes it instead when the body was not read to its end)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, opened on the first request (it must
    be opened inside the running event loop). Proxies from the environment apply, as
    with httpx, and certificates are checked against httpx's trust store."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str, int | None], _Proxy] = {}

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS,
                keepalive_timeout=KEEPALIVE_S,
                ssl=httpx2.create_ssl_context(),
            )
            # Not trust_env: aiohttp would then look for a proxy and a .netrc on a
            # thread at every request (proxies are looked up once per origin below;
            # the key goes in the Authorization header). No cookie jar: httpx keeps one.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    def _proxy_for(self, url: httpx2.URL) -> _Proxy:
        """The environment's proxy for `url`'s origin (HTTPS_PROXY, NO_PROXY...), read
        once per origin as httpx reads it once per client."""
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxies:
            try:
                proxy, auth = get_env_proxy_for_url(yarl.URL(str(url)))
                self._proxies[origin] = (str(proxy), auth)
            except LookupError:
                self._proxies[origin] = (None, None)
        return self._proxies[origin]

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        proxy, proxy_auth = self._proxy_for(request.url)
        with _as_httpx_errors(request):
            response = await self._opened().request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=_payload(await request.aread()),
                proxy=proxy,
                proxy_auth=proxy_auth,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            )
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
