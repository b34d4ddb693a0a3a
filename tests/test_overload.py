"""Overload is explicit: past SEMCACHE_MAX_CONCURRENT_RPCS a call is refused with
RESOURCE_EXHAUSTED and a retry hint, logged and counted; a burst that queues in
gRPC waits to be served or refused instead of being dropped as a bare CANCELLED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_client._rpc_status import retry_after_s
from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import App, build_app
from service.auth import load_keys
from service.embedding.base import Embedder
from service.metrics import Metrics
from service.overload import InFlight
from service.transport.grpc.server import Security, start_server
from service.transport.http import door, start_http_server
from tests.conftest import Service, make_settings
from tests.httpdoor import CLIENT_KEY, write_keys_file

BOUND = 2
# Far longer than the test: held calls end only when the test cancels them.
HELD_TTFT_MS = 120_000
BURST_CALLS = 1_500  # past gRPC's default 1,000 waiting calls, where it starts dropping


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded by iterations, not by a clock) until `condition()` holds."""
    for _ in range(2_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest_asyncio.fixture
async def slow_upstream() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=HELD_TTFT_MS)) as sim:
        yield sim


@pytest_asyncio.fixture
async def bounded(
    embedder: Embedder, slow_upstream: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[tuple[App, grpc.aio.Channel]]:
    """A service that serves at most BOUND RPCs at once, in front of a stalled upstream."""
    settings = make_settings("edge", tmp_path / "data", slow_upstream.base_url)
    app = await build_app(settings, embedder, {})
    server = await start_server(app, "127.0.0.1", 0, max_concurrent_rpcs=BOUND)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield app, channel
    finally:
        await channel.close()
        await server.stop(0)
        await app.aclose()


async def test_calls_past_the_bound_get_resource_exhausted_with_retry_info(
    bounded: tuple[App, grpc.aio.Channel], slow_upstream: UpstreamSimulator
) -> None:
    app, channel = bounded
    stub = pb_grpc.SemanticCacheServiceStub(channel)
    metrics = app.metrics
    bypass = pb.CACHE_POLICY_BYPASS
    held = [
        asyncio.ensure_future(
            stub.Complete(pb.CompleteRequest(prompt=f"q {i}", cache_policy=bypass))
        )
        for i in range(BOUND)
    ]
    try:
        await until(lambda: slow_upstream.request_count() == BOUND, "both calls upstream")
        assert sample(metrics, "semcache_rpcs_in_flight") == BOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(pb.CompleteRequest(prompt="one too many"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SEMCACHE_MAX_CONCURRENT_RPCS" in (caught.value.details() or "")
        delay_s = retry_after_s(caught.value.trailing_metadata())
        assert delay_s is not None and 0 < delay_s <= 2
        assert sample(metrics, "semcache_overloaded_total", rpc="Complete") == 1
        refused = {"rpc": "Complete", "code": "RESOURCE_EXHAUSTED", "cache": "none", "model": ""}
        assert sample(metrics, "semcache_requests_total", **refused) == 1
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING, "probes never refused"
    finally:
        for call in held:
            call.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    await until(lambda: sample(metrics, "semcache_rpcs_in_flight") == 0, "slots given back")
    stats = await stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert stats.tenant == "default", "admitted again once calls finished"


async def test_a_burst_that_waits_for_the_event_loop_is_not_dropped(service: Service) -> None:
    """gRPC queues the calls the event loop has not picked up; by default it drops
    some past 1,000 as CANCELLED with no message. Block the loop while a burst
    arrives: every call must still be answered."""
    health = health_pb2_grpc.HealthStub(service.channel)
    await health.Check(health_pb2.HealthCheckRequest())  # connected before the burst
    waiting = [
        asyncio.ensure_future(health.Check(health_pb2.HealthCheckRequest()))
        for _ in range(BURST_CALLS)
    ]
    await asyncio.sleep(0)  # let every call start
    await asyncio.sleep(0)
    time.sleep(2.0)  # noqa: ASYNC251 - blocks the server's loop while gRPC queues the burst
    results = await asyncio.gather(*waiting, return_exceptions=True)
    codes = [
        r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results
    ]
    dropped = codes.count(grpc.StatusCode.CANCELLED)
    assert dropped == 0, f"{dropped} of {BURST_CALLS} calls dropped as CANCELLED"
    assert codes.count(grpc.StatusCode.OK) == BURST_CALLS


async def test_the_http_door_shares_the_bound_and_answers_503_with_retry_after(
    embedder: Embedder, slow_upstream: UpstreamSimulator, tmp_path: Path
) -> None:
    """One bound for the process: a call held on either door takes a slot, and past
    the bound the HTTP door refuses with 503 and Retry-After as gRPC does with
    RESOURCE_EXHAUSTED. A caller without a known key is told so first, on either
    door. The model list and the live numbers are never refused."""
    settings = make_settings("edge", tmp_path / "data", slow_upstream.base_url)
    app = await build_app(settings, embedder, {})
    keyring = load_keys(write_keys_file(tmp_path / "keys.yaml"))
    gate = InFlight(BOUND, app.metrics)
    server = await start_server(app, "127.0.0.1", 0, None, Security(keyring), gate)
    http = await start_http_server(app, "127.0.0.1", 0, keyring, grace_s=0.1, in_flight=gate)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.SemanticCacheServiceStub(channel)
    metrics = app.metrics
    chat_url = f"{http.base_url}/chat/completions"
    key = {"authorization": f"Bearer {CLIENT_KEY}"}
    grpc_key = (("authorization", f"Bearer {CLIENT_KEY}"),)

    def chat(question: str) -> dict[str, object]:
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}

    async with aiohttp.ClientSession(headers=key) as session, aiohttp.ClientSession() as anon:
        held_grpc = asyncio.ensure_future(
            stub.Complete(pb.CompleteRequest(prompt="held grpc"), metadata=grpc_key)
        )
        held_http = asyncio.ensure_future(session.post(chat_url, json=chat("held http")))
        try:
            await until(lambda: slow_upstream.request_count() == BOUND, "both calls upstream")
            assert sample(metrics, "semcache_rpcs_in_flight") == BOUND

            async with session.post(chat_url, json=chat("one too many")) as refused:
                body = await refused.json()
                assert refused.status == 503
                assert 1 <= int(refused.headers["Retry-After"]) <= 2
                assert "SEMCACHE_MAX_CONCURRENT_RPCS" in body["error"]["message"]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Complete(pb.CompleteRequest(prompt="too many"), metadata=grpc_key)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            async with anon.post(chat_url, json=chat("who am I")) as unknown:
                assert unknown.status == 401, "no key: told so, not told to come back"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Complete(pb.CompleteRequest(prompt="who am I"))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for probe in ("/v1/models", "/live.json"):
                async with session.get(http.base_url.removesuffix("/v1") + probe) as answer:
                    assert answer.status == 200, f"{probe} is never refused"

            label = "http_chat_completions"
            assert sample(metrics, "semcache_overloaded_total", rpc=label) == 1
            counted = {"rpc": label, "code": "RESOURCE_EXHAUSTED", "cache": "none", "model": ""}
            assert sample(metrics, "semcache_requests_total", **counted) == 1
        finally:
            held_grpc.cancel()
            await http.aclose()  # cancels the held HTTP call after its grace
            await asyncio.gather(held_grpc, held_http, return_exceptions=True)
            await channel.close()
            await server.stop(0)
    await until(lambda: gate.count == 0, "both slots given back")
    await app.aclose()


async def test_serve_hands_one_bound_to_both_doors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`SEMCACHE_MAX_CONCURRENT_RPCS` bounds the process, not each door: with a gate
    each, a server at its bound on gRPC would still take as many again over HTTP."""
    from types import SimpleNamespace

    import service.serve as serve
    from service.errors import StartupError
    from service.transport.grpc.server import Security

    gates: dict[str, object] = {}

    class Running:
        async def stop(self, grace: object) -> None:
            pass

    async def grpc_door(*args: object) -> Running:
        gates["grpc"] = args[-1]
        return Running()

    async def http_door(*args: object) -> None:
        gates["http"] = args[-1]
        raise StartupError("stop after both doors were handed their bound")

    monkeypatch.setattr(serve, "start_server", grpc_door)
    monkeypatch.setattr(serve, "_start_http", http_door)
    settings = make_settings("edge", tmp_path / "data", "http://127.0.0.1:9/v1", http_port=0)
    embedder = SimpleNamespace(run_inline_when=lambda gate: None)
    app = SimpleNamespace(metrics=Metrics(), cache=SimpleNamespace(embedder=embedder))

    with pytest.raises(StartupError):
        await serve.serve_until_signalled(app, settings, Security())  # type: ignore[arg-type]

    assert isinstance(gates["grpc"], InFlight) and gates["http"] is gates["grpc"]
    assert gates["grpc"].limit == settings.max_concurrent_rpcs


@pytest.mark.parametrize("inline", [True, False])
async def test_serve_lets_a_lone_call_embed_inline_only_while_it_is_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inline: bool
) -> None:
    """Issue 13: the embedder runs a text on the event loop only while the process
    serves that one call (both doors counted); `SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE=false`
    keeps every text on the workers."""
    from types import SimpleNamespace

    import service.serve as serve
    from service.errors import StartupError
    from service.transport.grpc.server import Security

    gates: list[object] = []
    bounds: list[object] = []

    async def grpc_door(*args: object) -> None:
        bounds.append(args[-1])
        raise StartupError("stop once the embedder was handed its gate")

    monkeypatch.setattr(serve, "start_server", grpc_door)
    settings = make_settings(
        "edge", tmp_path / "data", "http://127.0.0.1:9/v1", embedding_inline_when_alone=inline
    )
    embedder = SimpleNamespace(run_inline_when=gates.append)
    app = SimpleNamespace(metrics=Metrics(), cache=SimpleNamespace(embedder=embedder))

    with pytest.raises(StartupError):
        await serve.serve_until_signalled(app, settings, Security())  # type: ignore[arg-type]

    if not inline:
        assert gates == []
        return
    (gate,), (bound,) = gates, bounds
    assert callable(gate) and isinstance(bound, InFlight)
    bound.enter("Complete")
    assert gate() is True  # the call that embeds is the only one in flight
    bound.enter("Complete")
    assert gate() is False


async def _stalled_upload(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sent its headers and 11 of the 100 body bytes it announced."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write((head + "Content-Length: 100\r\n\r\n").encode() + b'{"messages"')
    await writer.drain()
    return reader, writer


async def test_slow_uploads_take_no_slot_and_time_out_as_a_408(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Found by an audit: a slot was taken before the body was read, with no limit on
    how long that took, so BOUND + 1 half-sent bodies refused every call with a 503.
    The body is now read first, within `BODY_TIMEOUT_S` (a 408), and a client that
    closes mid-body is counted CANCELLED, not a 500 with a traceback."""
    monkeypatch.setattr(door, "BODY_TIMEOUT_S", 1.0, raising=False)
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    app = await build_app(settings, embedder, {})
    gate = InFlight(BOUND, app.metrics)
    http = await start_http_server(app, "127.0.0.1", 0, None, grace_s=0.1, in_flight=gate)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}
    stalled = [await _stalled_upload(http.port) for _ in range(BOUND + 1)]
    label = {"rpc": "http_chat_completions", "cache": "none", "model": ""}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{http.base_url}/chat/completions", json=chat) as answer,
        ):
            assert answer.status == 200, await answer.text()
        stalled[0][1].close()  # gone mid-body
        await until(
            lambda: sample(app.metrics, "semcache_requests_total", code="CANCELLED", **label),
            "a client gone mid-body counted as CANCELLED",
        )
        reply = await asyncio.wait_for(stalled[1][0].read(4096), timeout=30)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b'"request_timeout"' in reply
        assert sample(app.metrics, "semcache_requests_total", code="INTERNAL", **label) == 0
    finally:
        for _, writer in stalled:
            writer.close()
        await http.aclose()
        await app.aclose()


async def test_signals_are_taken_before_the_doors_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found from outside: "semcache serving" was logged before SIGTERM had a handler,
    so a SIGTERM sent on that line killed the process without draining (10 of 16)."""
    import signal
    from types import SimpleNamespace

    import service.serve as serve
    from service.errors import StartupError
    from service.transport.grpc.server import Security

    seen: list[object] = []

    async def grpc_door(*args: object) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise StartupError("stop once the door was asked to open")

    monkeypatch.setattr(serve, "start_server", grpc_door)
    settings = make_settings("edge", tmp_path / "data", "http://127.0.0.1:9/v1")
    embedder = SimpleNamespace(run_inline_when=lambda gate: None)
    app = SimpleNamespace(metrics=Metrics(), cache=SimpleNamespace(embedder=embedder))
    with pytest.raises(StartupError):
        await serve.serve_until_signalled(app, settings, Security())  # type: ignore[arg-type]
    assert seen and seen[0] is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handed back on failure
