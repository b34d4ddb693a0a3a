"""Whether an upstream is semcache's own simulator, so its answers never pass for real ones.

The simulator names itself: its `/models` list says `owned_by:
"semcache-simulator"`, and every completion and chunk it sends carries
`system_fingerprint: "fp_semcache_sim"`. Found from outside: run `semcache
simulate-upstream` on a port, serve against it, then put a real provider (a
vLLM server, say, on the same port 8000) behind the same URL and restart on
the same data directory: the simulator's answers came back as exact hits,
since the cache's upstream identity is only the providers' names and URLs.

So `semcache serve` asks each provider's `/models` at start-up, alongside
its other work (`simulator_behind`); a provider that answers as the
simulator gives the cache an identity of its own (`scope.upstream_identity`),
which a real provider at the same URL never shares. And an answer that
carries the simulator's fingerprint is stored only under that identity: if
the simulator was not up when the service asked (or came later to a URL a
real provider had), its answers are served but not cached
(`CachingPolicy.storable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

SIMULATOR_FINGERPRINT = "fp_semcache_sim"
SIMULATOR_OWNER = "semcache-simulator"
PROBE_TIMEOUT_S = 2.0


async def simulator_behind(
    endpoints: Sequence[tuple[str, str | None]], timeout_s: float = PROBE_TIMEOUT_S
) -> bool:
    """Whether any of `endpoints` ((base URL, API key or None)) answers `/models` as the
    simulator; an endpoint that does not answer in `timeout_s`, or answers otherwise,
    counts as a real provider."""
    if not endpoints:
        return False
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        found = await asyncio.gather(*(_is_simulator(session, u, k) for u, k in endpoints))
    return any(found)


async def _is_simulator(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.get(base_url.rstrip("/") + "/models", headers=headers) as response:
            if response.status != 200:
                return False
            listing = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    models = listing.get("data") if isinstance(listing, dict) else None
    return isinstance(models, list) and any(
        isinstance(model, dict) and model.get("owned_by") == SIMULATOR_OWNER for model in models
    )
