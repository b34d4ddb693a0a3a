"""`LeanAsyncClient`: the `openai` client's httpx client, without the work it never needs.

The provider hands the `openai` client an httpx client (`http_client=`); the
client builds each request with `build_request` and sends it with `send`, both
httpx's public methods. httpx's own versions do work a call to a provider never
needs: they parse the same URL again on every call, normalise and merge the
headers twice, and run every request through an auth flow and a redirect loop
even with no auth set and a plain 200 coming back. Measured on 2 cores against
the simulator (issue 13), that was about 0.17 ms of the roughly 1 ms the SDK
added to a call over a thin aiohttp one.

Here the common call (a JSON body to a URL string, headers as a list, no
per-call params, cookies or auth) is built and sent directly: the URL parsed
once per distinct string, the client's default headers merged in as plain
pairs (httpx's order and repeats, normalised once, by the request), the
transport called straight away. Anything else (files, params, cookies the
provider set, event hooks, auth, a redirect) goes through httpx's own methods,
so behaviour is the same; a test compares the requests both build.

`LeanAsyncOpenAI` is `openai.AsyncOpenAI` remembering the URL it joins from
its base URL and a path (`_prepare_url`, which parses both again on every
call): another 0.1 ms a call, measured the same way. It overrides one of the
SDK's own methods, so a test checks it against the SDK's result.

`semcache bench upstream` measures a call through both against the SDK's
plain client and a thin aiohttp one.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx2
import openai

_URLS_KEPT = 64  # distinct request URLs parsed once each (a provider uses a handful)


class LeanAsyncOpenAI(openai.AsyncOpenAI):
    """`openai.AsyncOpenAI` with each request URL joined once per base URL and path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._joined = functools.lru_cache(maxsize=_URLS_KEPT)(self._join)

    @property
    def user_agent(self) -> str:
        """The SDK's own ("AsyncOpenAI/Python x.y"): the SDK names it after the class."""
        return super().user_agent.replace(type(self).__name__, "AsyncOpenAI", 1)

    def _prepare_url(self, url: str) -> httpx2.URL:
        return self._joined(str(self.base_url), url)

    def _join(self, base_url: str, url: str) -> httpx2.URL:
        """The SDK's join of `url` to the base URL, which `base_url` names (so a changed
        base URL is joined anew)."""
        return super()._prepare_url(url)


class LeanAsyncClient(openai.DefaultAsyncHttpxClient):
    """The SDK's default httpx client (its timeout, pool limits and redirects), over
    `transport`, with the short path above for plain JSON calls."""

    def __init__(self, transport: httpx2.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._lean_transport = transport
        self._closed = False

    def build_request(self, method: str, url: Any, **kwargs: Any) -> httpx2.Request:
        """A request as httpx's `build_request` builds it (see the module's note)."""
        headers = kwargs.get("headers")
        if not self._plain(url, headers, kwargs):
            return super().build_request(method, url, **kwargs)
        # As httpx merges them: the client's defaults not given again, then the given ones.
        given = list(headers or ())
        names = {name.lower() for name, _ in given}
        defaults = self.headers.multi_items()
        merged = [(name, value) for name, value in defaults if name.lower() not in names] + given
        timeout = kwargs.get("timeout", httpx2.USE_CLIENT_DEFAULT)
        if isinstance(timeout, type(httpx2.USE_CLIENT_DEFAULT)):
            timeout = self.timeout
        return httpx2.Request(
            method,
            _parsed(url),
            content=kwargs.get("content"),
            headers=merged,
            extensions={"timeout": httpx2.Timeout(timeout).as_dict()},
        )

    def _plain(self, url: Any, headers: Any, kwargs: dict[str, Any]) -> bool:
        """Whether the call is one the short path builds exactly as httpx would."""
        extras = ("data", "files", "json", "params", "cookies", "extensions")
        return (
            isinstance(url, str)
            and isinstance(headers, list)
            and all(kwargs.get(name) is None for name in extras)
            and not self.params
            and not self.cookies
            and not str(self.base_url)
        )

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        """The response, from the transport itself when nothing needs httpx's loop."""
        hooks = self.event_hooks
        if (
            self._closed
            or self.auth is not None
            or set(kwargs) - {"stream"}
            or hooks["request"]
            or hooks["response"]
        ):
            return await super().send(request, **kwargs)
        response = await self._lean_transport.handle_async_request(request)
        response.request = request
        if response.has_redirect_location and self.follow_redirects:
            # Followed from here by httpx's own loop, as the SDK's client follows it (the
            # request is not sent again: that would be a second upstream call).
            redirected = self._build_redirect_request(request, response)
            await response.aclose()
            return await super().send(redirected, **kwargs)
        self.cookies.extract_cookies(response)
        if not kwargs.get("stream", False):
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()


@functools.lru_cache(maxsize=_URLS_KEPT)
def _parsed(url: str) -> httpx2.URL:
    """`url` parsed, once per distinct string (httpx's URLs do not change)."""
    return httpx2.URL(url)
