"""The live page on the HTTP door: `/live.json`'s numbers and who may see them, and the page
itself rendered by headless Chromium (Debian's `chromium`) against a running service."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import load_keys
from service.embedding.base import Embedder
from service.transport.http.live import quantile_s
from tests.httpdoor import (
    ADMIN_KEY,
    CLIENT_KEY,
    MODEL,
    OTHER_KEY,
    QUESTION,
    HttpService,
    ask,
    start_http_service,
    write_keys_file,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium runs the page's script in virtual time: this much of it is enough for the
# first poll of /live.json to come back and render (polls run every 2 s).
VIRTUAL_TIME_BUDGET_MS = 5000
BROWSER_TIMEOUT_S = 90.0


@pytest_asyncio.fixture
async def door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    running = await start_http_service(embedder, simulator, tmp_path / "data")
    yield running
    await running.close()


async def live_json(
    door: HttpService, api_key: str | None = None, query: str = ""
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{door.root_url}/live.json{query}", headers=headers) as response,
    ):
        return response.status, await response.json()


async def miss_then_hit(
    door: HttpService, api_key: str = "open-mode", text: str = QUESTION
) -> None:
    async with door.async_client(api_key=api_key) as client:
        await client.chat.completions.create(model=MODEL, messages=ask(text))
        await client.chat.completions.create(model=MODEL, messages=ask(text))


async def test_live_json_after_a_miss_and_a_hit(door: HttpService) -> None:
    await miss_then_hit(door)
    status, live = await live_json(door)
    assert status == 200
    totals = live["totals"]
    assert (totals["misses"], totals["exact_hits"], totals["semantic_hits"]) == (1, 1, 0)
    assert totals["hit_rate"] == 0.5 and totals["entries"] == 1
    assert totals["cost_spent_usd"] > 0
    assert totals["cost_saved_usd"] == pytest.approx(totals["cost_spent_usd"])
    assert live["latency_ms"]["hit"]["count"] == 1 and live["latency_ms"]["miss"]["count"] == 1
    assert live["latency_ms"]["hit"]["p50"] > 0
    assert live["refusal_reasons"] == [{"reason": "no_candidates", "count": 1}]
    assert live["viewer"] == {"tenant": "default", "all_tenants": True}
    assert QUESTION.lower() not in json.dumps(live).lower()  # no prompt text, ever
    assert live["prompts_shown"] is False


async def test_latency_counts_grpc_calls_too(door: HttpService) -> None:
    await door.grpc.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    await door.grpc.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    _, live = await live_json(door)
    assert live["latency_ms"]["hit"]["count"] == 1
    assert live["totals"]["hit_rate"] == 0.5


@pytest_asyncio.fixture
async def keyed_door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    keyring = load_keys(write_keys_file(tmp_path / "keys.yaml"))
    running = await start_http_service(embedder, simulator, tmp_path / "data", keyring)
    yield running
    await running.close()


async def test_a_client_key_sees_its_own_tenant_and_an_admin_every_tenant(
    keyed_door: HttpService,
) -> None:
    await miss_then_hit(keyed_door, CLIENT_KEY)
    await miss_then_hit(keyed_door, OTHER_KEY, "How do I bake sourdough bread?")
    client_status, client_view = await live_json(keyed_door, CLIENT_KEY)
    _, admin_view = await live_json(keyed_door, ADMIN_KEY)
    _, narrowed = await live_json(keyed_door, ADMIN_KEY, "?tenant=globex")
    forbidden, refusal = await live_json(keyed_door, CLIENT_KEY, "?tenant=globex")
    anonymous, _ = await live_json(keyed_door)
    assert client_status == 200
    assert [row["tenant"] for row in client_view["tenants"]] == ["acme"]
    assert client_view["totals"]["requests"] == 2
    assert [row["tenant"] for row in admin_view["tenants"]] == ["acme", "globex"]
    assert admin_view["totals"]["requests"] == 4
    assert [row["tenant"] for row in narrowed["tenants"]] == ["globex"]
    assert forbidden == 403 and refusal["error"]["code"] == "permission_denied"
    assert anonymous == 401


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    buckets = [(0.001, 0.0), (0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile_s(0.5, buckets) == pytest.approx(0.01)
    assert quantile_s(0.75, buckets) == pytest.approx(0.055)
    assert quantile_s(0.5, [(float("inf"), 0.0)]) is None
    assert quantile_s(0.99, [(0.5, 1.0), (float("inf"), 10.0)]) == 0.5


# --- the page in a browser ----------------------------------------------------------------


async def chromium(*arguments: str) -> str:
    """Run headless Chromium (off the event loop: the service answers it meanwhile)."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--hide-scrollbars",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        *arguments,
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_the_page_renders_the_hit_rate_in_a_browser(
    door: HttpService, tmp_path: Path
) -> None:
    await miss_then_hit(door)
    page = f"{door.root_url}/live"
    dom = await chromium("--dump-dom", page)
    assert 'data-rendered="yes"' in dom, dom[-2000:]
    assert '<div class="big" id="hit-rate">50.0%</div>' in dom
    assert '<span id="exact-hits">1</span>' in dom and '<span id="misses">1</span>' in dom
    assert "no_candidates" in dom
    screenshot = tmp_path / "live.png"
    await chromium(f"--screenshot={screenshot}", "--window-size=1200,800", page)
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_hits_in_other_words_are_no_refusal_reason() -> None:
    """Found from outside: `same_form` (a served semantic hit) was listed among the reasons
    the cache did not serve, as were `identical` and `audit_unanswered`."""
    from service.transport.http.live import refusal_reasons

    decisions = {
        ("acme", "same_form"): 5.0, ("acme", "identical"): 2.0, ("acme", "ok"): 1.0,
        ("acme", "audit_unanswered"): 1.0, ("acme", "exact"): 9.0, ("acme", "too_risky"): 3.0,
        ("other", "no_candidates"): 4.0,
    }  # fmt: skip
    assert refusal_reasons(decisions, {"acme"}) == [{"reason": "too_risky", "count": 3}]


def test_a_sub_millisecond_request_is_told_apart_from_a_one_millisecond_one() -> None:
    """Found from outside: with 1 ms as the first bucket, every exact hit read as
    0.5 ms at p50 on the live page, whatever it took."""
    from service.metrics import Metrics
    from service.transport.http.live import latency_ms

    metrics = Metrics()
    for _ in range(10):
        metrics.observe_request("Complete", "OK", "exact_hit", "m", 0.00015)
    p50 = latency_ms(metrics.request_duration_buckets())["hit"]["p50"]
    assert p50 < 0.25


async def test_a_client_key_sees_latency_but_not_how_much_traffic_it_covers(
    keyed_door: HttpService,
) -> None:
    """Found from outside: the service-wide latency's call count told a client key how
    many calls every other tenant made."""
    await miss_then_hit(keyed_door, CLIENT_KEY)
    await miss_then_hit(keyed_door, OTHER_KEY, "How do I bake sourdough bread?")
    _, client_view = await live_json(keyed_door, CLIENT_KEY)
    _, admin_view = await live_json(keyed_door, ADMIN_KEY)
    assert client_view["latency_ms"]["hit"]["count"] is None
    assert client_view["latency_ms"]["miss"]["p50"] is not None
    assert admin_view["latency_ms"]["miss"]["count"] == 2


async def test_every_tenants_view_shows_the_busiest_and_totals_them_all(
    door: HttpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: a row for each of 7,000 open-mode tenants, each with a store
    count, made /live.json 1.3 MB and 3.2 s, fetched every 2 s by an open page."""
    monkeypatch.setattr("service.transport.http.live.TENANTS_SHOWN", 2)
    for n, tenant in enumerate(["quiet", "busy", "middling"]):
        for asked in range(1 + 2 * (tenant == "busy") + (tenant == "middling")):
            prompt = f"Question {asked} of tenant number {n} about taxes?"
            metadata = (("x-tenant-id", tenant),)
            await door.grpc.stub.Complete(pb.CompleteRequest(prompt=prompt), metadata=metadata)
    _, live = await live_json(door)
    assert [row["tenant"] for row in live["tenants"]] == ["busy", "middling"]
    assert live["tenants_total"] == 3
    assert (live["totals"]["requests"], live["totals"]["entries"]) == (6, 6)
    assert sum(reason["count"] for reason in live["refusal_reasons"]) == 6  # every tenant's


async def test_a_tenant_past_the_metrics_bound_is_told_its_reasons_are_not_counted_apart(
    door: HttpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: `?tenant=` for a tenant the metrics label `(other)` showed an
    empty list of refusal reasons, as if the cache had refused it nothing."""
    monkeypatch.setattr(door.grpc.app.metrics.tenant_label, "_limit", 1)
    for tenant in ("first", "later"):
        prompt = pb.CompleteRequest(prompt=f"What does tenant {tenant} pay in taxes?")
        await door.grpc.stub.Complete(prompt, metadata=(("x-tenant-id", tenant),))
    _, first = await live_json(door, query="?tenant=first")
    _, later = await live_json(door, query="?tenant=later")
    _, every = await live_json(door)
    assert first["refusal_reasons_complete"] and first["refusal_reasons"]
    assert not later["refusal_reasons_complete"] and later["refusal_reasons"] == []
    assert every["refusal_reasons_complete"]
    assert sum(reason["count"] for reason in every["refusal_reasons"]) == 2
