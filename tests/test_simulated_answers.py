"""Answers from `semcache simulate-upstream` never pass for a real provider's.

Found from outside: serve against the simulator on a port, then put a real
provider behind the same URL and restart on the same data directory, and the
simulator's answers came back as exact hits (the cache's upstream identity was
only the providers' names and URLs). The service now asks each provider's
`/models` at start-up and gives a simulator's answers an identity of their own,
and stores no answer bearing the simulator's mark unless it found the
simulator there.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from semcache_simulator.wire import SYSTEM_FINGERPRINT
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.cache.scope import upstream_identity
from service.domain import ChatMessage, CompletionRequest, Usage
from service.embedding.base import Embedder
from service.llm.provider import ProviderAnswer
from service.llm.simulator_probe import SIMULATOR_FINGERPRINT, simulator_behind
from service.pipeline.request import CachingPolicy
from tests.conftest import make_settings, start_service

QUESTION = "What is an okapi?"
REAL_ANSWER = "An okapi is a forest giraffe of the Congo."


async def _real_chat(_request: web.Request) -> web.Response:
    choice = {"index": 0, "message": {"content": REAL_ANSWER}, "finish_reason": "stop"}
    return web.json_response({"model": "gpt-4o-mini", "choices": [choice]})


async def _real_models(_request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "gpt-4o-mini", "owned_by": "openai"}]})


@asynccontextmanager
async def _real_provider(port: int) -> AsyncIterator[str]:
    """An OpenAI-compatible server that is not the simulator, on `port`."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _real_chat)
    app.router.add_get("/v1/models", _real_models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_a_real_provider_at_the_simulators_url_is_not_served_its_answers(
    embedder: Embedder, tmp_path: Path
) -> None:
    simulator = UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0))
    await simulator.start()
    port = simulator.port
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    try:
        service = await start_service(embedder, simulator, settings)
        try:
            simulated = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
            again = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        finally:
            await service.close()
    finally:
        await simulator.stop()
    assert (simulated.cache_status, again.cache_status) == (
        pb.CACHE_STATUS_MISS,
        pb.CACHE_STATUS_EXACT_HIT,  # the simulator's answers are cached, for the simulator
    )

    async with _real_provider(port) as base_url:
        assert base_url == settings.upstream_base_url
        service = await start_service(embedder, simulator, settings)
        try:
            real = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        finally:
            await service.close()
    assert (real.cache_status, real.content) == (pb.CACHE_STATUS_MISS, REAL_ANSWER)


async def test_the_probe_tells_the_simulator_from_a_provider_and_from_nothing() -> None:
    async with UpstreamSimulator(SimulatorConfig(api_key="sk-simulated-key")) as simulator:
        assert await simulator_behind([(simulator.base_url, "sk-simulated-key")])
        port = simulator.port
    assert not await simulator_behind([(f"http://127.0.0.1:{port}/v1", None)], timeout_s=1.0)
    async with _real_provider(port) as base_url:
        assert not await simulator_behind([(base_url, None)])


def test_the_simulators_marks_are_the_ones_the_service_reads() -> None:
    assert SYSTEM_FINGERPRINT == SIMULATOR_FINGERPRINT


def test_a_simulated_answer_is_stored_only_where_the_simulator_was_found() -> None:
    request = CompletionRequest(messages=(ChatMessage("user", QUESTION),))
    answer = ProviderAnswer("Simulated.", "gpt-4o-mini", "stop", Usage(), simulated=True)
    assert not CachingPolicy().storable(request, answer)
    assert CachingPolicy(simulator_upstream=True).storable(request, answer)


def test_a_simulators_identity_is_never_a_real_providers() -> None:
    providers = [("openai", "http://127.0.0.1:8000/v1")]
    real = upstream_identity(providers)
    assert upstream_identity(providers, simulator_behind=True) != real
    named = upstream_identity(providers, named="prod")
    assert upstream_identity(providers, named="prod", simulator_behind=True) != named


async def test_a_simulator_that_came_up_after_the_service_is_served_but_not_cached(
    embedder: Embedder, tmp_path: Path
) -> None:
    """Its answers reach the cache through the retrying provider, which must pass the
    simulator's mark on (it once rebuilt each answer without it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    late = UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0))
    settings = make_settings("edge", tmp_path / "data", f"http://127.0.0.1:{port}/v1")
    service = await start_service(embedder, late, settings)  # nothing listens yet
    try:
        await late.start(port=port)
        first = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        again = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    finally:
        await service.close()
        await late.stop()
    assert "Answer to" in first.content  # the simulator's, served
    assert (first.entry_id, again.cache_status) == ("", pb.CACHE_STATUS_MISS)
