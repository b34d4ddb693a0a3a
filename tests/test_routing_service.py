"""Routing and resilient providers through the gRPC API, against the simulator over HTTP."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml

from semcache_simulator import FaultConfig, SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.embedding.base import Embedder
from tests.conftest import Service, make_settings, start_service

SIMPLE = "What is the capital of France?"
HARD = (
    "Analyze step by step and compare the trade-offs of three database designs for an event store."
)


def ask(text: str, **fields: object) -> pb.CompleteRequest:
    return pb.CompleteRequest(prompt=text, **fields)  # type: ignore[arg-type]


async def faulty_service(
    embedder: Embedder, tmp_path: Path, faults: dict[str, FaultConfig], **settings: object
) -> tuple[UpstreamSimulator, Service]:
    sim = UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0, faults=faults))
    await sim.start()
    values = {"retry_base_delay_s": 0.001, "retry_max_delay_s": 0.01, **settings}
    config = make_settings("edge", tmp_path / "data", sim.base_url, **values)
    return sim, await start_service(embedder, sim, config)


async def test_router_picks_the_cheap_model_for_simple_questions(service: Service) -> None:
    simple = await service.stub.Complete(ask(SIMPLE))
    hard = await service.stub.Complete(ask(HARD))
    assert (simple.model, simple.tier) == ("gpt-4o-mini", "small")
    assert simple.route_reason.startswith("rule:")
    assert (hard.model, hard.tier) == ("gpt-4o", "large")
    assert hard.cost_usd > simple.cost_usd
    hit = await service.stub.Complete(ask(SIMPLE))
    assert (hit.route_reason, hit.tier, hit.upstream_attempts) == ("cache", "small", 0)


async def test_named_model_bypasses_routing_and_unknown_is_rejected(service: Service) -> None:
    named = await service.stub.Complete(ask(SIMPLE, model="gpt-4o"))
    assert (named.model, named.route_reason) == ("gpt-4o", "requested")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Complete(ask(SIMPLE, model="gpt-5-ultra"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpt-4o-mini" in (caught.value.details() or ""), "the message lists known models"


async def test_failing_model_falls_over_to_its_fallback(embedder: Embedder, tmp_path: Path) -> None:
    sim, service = await faulty_service(
        embedder, tmp_path, {"gpt-4o-mini": FaultConfig(error_rate=1.0)}
    )
    try:
        answer = await service.stub.Complete(ask(SIMPLE))
        assert answer.model == "claude-3-5-haiku"
        assert answer.route_reason == "fallback:gpt-4o-mini"
        assert answer.upstream_attempts > 1
        again = await service.stub.Complete(ask(SIMPLE))
        assert again.cache_status == pb.CACHE_STATUS_EXACT_HIT
    finally:
        await service.close()
        await sim.stop()


async def test_rate_limited_upstream_is_retried(embedder: Embedder, tmp_path: Path) -> None:
    sim, service = await faulty_service(
        embedder, tmp_path, {"*": FaultConfig(rate_limit_rate=0.5, retry_after_s=0.01)}
    )
    try:
        answers = [await service.stub.Complete(ask(f"Question number {i}?")) for i in range(8)]
        assert all(a.content for a in answers)
        assert any(a.upstream_attempts > 1 for a in answers), "some call met a 429 and retried"
    finally:
        await service.close()
        await sim.stop()


async def test_all_providers_down_fails_fast_but_hits_are_served(
    embedder: Embedder, tmp_path: Path
) -> None:
    sim, service = await faulty_service(embedder, tmp_path, {}, breaker_failures=2)
    try:
        cached = await service.stub.Complete(ask(SIMPLE))
        await sim.stop()  # every provider is now unreachable
        for question in ("Who wrote Hamlet?", "How far away is the Moon?", "Who built Rome?"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await service.stub.Complete(ask(question))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "openai" in (caught.value.details() or "")
        assert "circuit open" in (caught.value.details() or ""), "the breaker now fails fast"
        hit = await service.stub.Complete(ask(SIMPLE))
        assert hit.cache_status == pb.CACHE_STATUS_EXACT_HIT
        assert hit.content == cached.content
    finally:
        await service.close()


async def test_stream_broken_after_first_token_errors_and_caches_nothing(
    embedder: Embedder, tmp_path: Path
) -> None:
    faults = {"*": FaultConfig(disconnect_rate=1.0)}
    sim, service = await faulty_service(embedder, tmp_path, faults, retry_max_attempts=1)
    try:
        call = service.stub.StreamComplete(ask(SIMPLE))
        deltas = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in call:
                deltas.append(event.delta)
        assert deltas, "the stream had started"
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broke" in (caught.value.details() or "")
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries == 0
    finally:
        await service.close()
        await sim.stop()


async def test_stream_fails_over_before_the_first_token(embedder: Embedder, tmp_path: Path) -> None:
    sim, service = await faulty_service(
        embedder, tmp_path, {"gpt-4o-mini": FaultConfig(error_rate=1.0)}
    )
    try:
        deltas, final = [], None
        async for event in service.stub.StreamComplete(ask(SIMPLE)):
            if event.HasField("final"):
                final = event.final
            else:
                deltas.append(event.delta)
        assert final is not None
        assert final.model == "claude-3-5-haiku"
        assert final.route_reason == "fallback:gpt-4o-mini"
        assert "".join(deltas) == final.content
    finally:
        await service.close()
        await sim.stop()


async def test_prompt_too_big_for_the_context_window_goes_to_a_bigger_model(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    from service.config import DEFAULTS_DIR

    catalogue = yaml.safe_load((DEFAULTS_DIR / "models.example.yaml").read_text())
    for model in catalogue["models"]:
        if model["name"] == "gpt-4o-mini":
            model["context_window_tokens"] = 50
    path = tmp_path / "small-window.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, catalogue_path=path)
    service = await start_service(embedder, simulator, settings)
    try:
        fits = await service.stub.Complete(ask(SIMPLE, max_tokens=20))
        too_big = await service.stub.Complete(ask("What is the capital of Spain?", max_tokens=200))
        assert fits.model == "gpt-4o-mini"
        assert too_big.model == "claude-3-5-haiku"
    finally:
        await service.close()
