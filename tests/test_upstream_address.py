"""Errors a caller sees name the upstream provider, never its address (the address
goes to the service's log, for the operator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from semcache_simulator import ANY_MODEL, FaultConfig, SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.embedding.base import Embedder
from tests.conftest import make_settings, start_service

QUESTION = "What is machine learning?"
ALWAYS_500 = SimulatorConfig(
    ttft_ms=0, ms_per_token=0, faults={ANY_MODEL: FaultConfig(error_rate=1.0)}
)
WRONG_KEY = SimulatorConfig(ttft_ms=0, ms_per_token=0, api_key="not-the-configured-key")
PLAIN = SimulatorConfig(ttft_ms=0, ms_per_token=0)
# 1.08 MB of UTF-8 (past the simulator's 1 MiB body limit) in ~68k estimated tokens
HUGE_PROMPT = "\N{GRINNING FACE}" * 270_000

CASES: list[tuple[SimulatorConfig, dict[str, Any], grpc.StatusCode, str]] = [
    (ALWAYS_500, {}, grpc.StatusCode.UNAVAILABLE, "HTTP 500"),
    (WRONG_KEY, {}, grpc.StatusCode.UNAVAILABLE, "HTTP 401"),
    (PLAIN, {"prompt": HUGE_PROMPT}, grpc.StatusCode.INVALID_ARGUMENT, "HTTP 413"),
]


@pytest.mark.parametrize(("config", "fields", "code", "status_text"), CASES)
async def test_upstream_failures_name_the_provider_not_its_address(
    embedder: Embedder,
    tmp_path: Path,
    config: SimulatorConfig,
    fields: dict[str, Any],
    code: grpc.StatusCode,
    status_text: str,
) -> None:
    async with UpstreamSimulator(config) as simulator:
        base_url, address = simulator.base_url, f"127.0.0.1:{simulator.port}"
        settings = make_settings(
            "edge", tmp_path / "data", simulator.base_url, max_prompt_bytes=2_000_000
        )
        service = await start_service(embedder, simulator, settings)
        request = {"prompt": QUESTION, "cache_policy": pb.CACHE_POLICY_BYPASS, **fields}
        try:
            with capture_logs() as logs:
                for call in (service.stub.Complete, service.stub.StreamComplete):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        result = call(pb.CompleteRequest(**request))
                        if isinstance(result, grpc.aio.UnaryStreamCall):
                            async for _ in result:
                                pass
                        else:
                            await result
                    details = caught.value.details() or ""
                    assert caught.value.code() == code, details
                    assert "openai" in details and status_text in details
                    assert address not in details and "127.0.0.1" not in details
        finally:
            await service.close()
    logged = [entry for entry in logs if entry.get("event") == "upstream call failed"]
    assert logged and all(entry["base_url"] == base_url for entry in logged)
