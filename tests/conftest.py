"""Shared fixtures: one embedding model per session (the default backend, the one
users run); a fresh simulator, store and in-process gRPC server (port 0) per
test, on each vector store backend. Test settings never read the environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import structlog
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import App, build_app
from service.config import Settings
from service.embedding.base import Embedder
from service.embedding.factory import build_embedder
from service.transport.grpc.server import RunningServer, Security, start_server

BACKENDS = ("edge", "qdrant-memory")
REPO = Path(__file__).resolve().parents[1]
# The ONNX export `make run` makes, shared: exporting takes 10-20 s, and a lock
# plus atomic renames let concurrent sessions share the directory.
MODEL_CACHE_DIR = REPO / ".semcache" / "models"


class IsolatedSettings(Settings):
    """`Settings` from keyword arguments only: no SEMCACHE_*, OPENAI_* or .env values."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a `semcache bench` process gets in tests: no SEMCACHE_* setting of
    the developer's, the model files from the checkout's cache, then `extra`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    clean["SEMCACHE_EMBEDDING_CACHE_DIR"] = str(REPO / ".semcache" / "models")
    return {**clean, **(extra or {})}


def run_bench_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`semcache bench ARGS` run to its end in the checkout, with `bench_env(env)`."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", *args],
        cwd=REPO,
        env=bench_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """A test that runs a CLI command in process configures logging for the whole
    process, with loggers cached on first use; put structlog's defaults back so
    the loggers of later tests stay uncached and `capture_logs` sees them."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The embedding backend `semcache serve` uses by default (ONNX int8)."""
    backend = IsolatedSettings().embedding_backend
    return build_embedder(backend, None, MODEL_CACHE_DIR, 1)


@pytest_asyncio.fixture
async def simulator() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0)) as sim:
        yield sim


def make_settings(
    backend: str, data_dir: Path, upstream_base_url: str, **overrides: Any
) -> Settings:
    """Settings for a test service; never reads the environment's SEMCACHE_* values."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "qdrant_url": ":memory:" if backend == "qdrant-memory" else None,
        "upstream_base_url": upstream_base_url,
        "upstream_api_key": "test-key",
        **overrides,
    }
    return IsolatedSettings(**values)


@dataclass
class Service:
    """A running service under test and the handles a test needs."""

    app: App
    server: RunningServer
    channel: grpc.aio.Channel
    stub: pb_grpc.SemanticCacheServiceStub
    simulator: UpstreamSimulator
    settings: Settings

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.app.aclose()


async def start_service(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    settings: Settings,
    security: Security | None = None,
    environ: dict[str, str] | None = None,
) -> Service:
    app = await build_app(settings, embedder, environ or {})
    server = await start_server(app, "127.0.0.1", 0, security=security)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.SemanticCacheServiceStub(channel)
    return Service(app, server, channel, stub, simulator, settings)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def service(
    embedder: Embedder, simulator: UpstreamSimulator, backend: str, tmp_path: Path
) -> AsyncIterator[Service]:
    settings = make_settings(backend, tmp_path / "data", simulator.base_url)
    running = await start_service(embedder, simulator, settings)
    yield running
    await running.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its private key (PEM files)."""
    return make_tls_pair(tmp_path)


def make_tls_pair(directory: Path) -> tuple[Path, Path]:
    """`cert.pem` and `key.pem` in `directory`: a self-signed certificate for localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl binary to make a test certificate")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
