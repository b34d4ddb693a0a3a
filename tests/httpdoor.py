"""Helpers for tests of the HTTP door: the gRPC service of `conftest` plus its HTTP door,
started in-process on port 0, as `semcache serve` runs them side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml

from semcache_simulator import UpstreamSimulator
from service.auth import KeyRing, hash_key
from service.embedding.base import Embedder
from service.transport.grpc.server import Security
from service.transport.http import RunningHttpServer, start_http_server
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"
PARAPHRASE = "What does machine learning mean?"  # a real paraphrase: the error budget weighs it
# An everyday form of QUESTION (same subject, word for word): the default decision serves
# it at once ("same_form"), found by the vector search, so it is still a semantic hit.
SAME_FORM = "Can you explain machine learning?"
MODEL = "gpt-4o-mini"
CLIENT_KEY = "sk-sc-http-client-key"  # tenant acme
OTHER_KEY = "sk-sc-http-other-key"  # tenant globex
ADMIN_KEY = "sk-sc-http-admin-key"  # tenant ops, admin


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def write_keys_file(path: Path) -> Path:
    """A keys file with `CLIENT_KEY`, `OTHER_KEY` and `ADMIN_KEY`."""
    entries = [
        {"key_sha256": hash_key(CLIENT_KEY), "tenant": "acme", "role": "client", "name": "app"},
        {"key_sha256": hash_key(OTHER_KEY), "tenant": "globex", "role": "client", "name": "g"},
        {"key_sha256": hash_key(ADMIN_KEY), "tenant": "ops", "role": "admin", "name": "root"},
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


@dataclass
class HttpService:
    """A running service with both doors."""

    grpc: Service
    http: RunningHttpServer

    @property
    def base_url(self) -> str:
        return self.http.base_url

    @property
    def root_url(self) -> str:
        return self.http.base_url.removesuffix("/v1")

    def client(self, api_key: str = "unused-in-open-mode", **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **options)

    def async_client(
        self, api_key: str = "unused-in-open-mode", **options: Any
    ) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **options)

    async def close(self) -> None:
        await self.http.aclose()
        await self.grpc.close()


async def start_http_service(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    data_dir: Path,
    keyring: KeyRing | None = None,
    upstream_base_url: str | None = None,
    **overrides: Any,
) -> HttpService:
    """The service on the embedded store with its gRPC and HTTP doors on free ports."""
    settings = make_settings(
        "edge", data_dir, upstream_base_url or simulator.base_url, http_port=0, **overrides
    )
    grpc_service = await start_service(embedder, simulator, settings, Security(keyring))
    http = await start_http_server(grpc_service.app, "127.0.0.1", 0, keyring)
    return HttpService(grpc_service, http)
