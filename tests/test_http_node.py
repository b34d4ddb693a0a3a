"""The `openai` package from npm, under Node.js, against the HTTP door (unary, streaming,
a 404): tests/node/openai_door.mjs, with the versions pinned in tests/node/package-lock.json."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service.embedding.base import Embedder
from tests.conftest import REPO
from tests.httpdoor import HttpService, start_http_service

NODE_DIR = REPO / "tests" / "node"
NODE, NPM = shutil.which("node"), shutil.which("npm")
INSTALL_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 120.0

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are not installed (Debian: nodejs, npm)"
)


def npm_ci() -> None:
    """Install the locked `openai` package once (`npm ci` needs the npm registry)."""
    if (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        return
    assert NPM is not None
    done = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stderr}"


@pytest_asyncio.fixture
async def door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    await asyncio.to_thread(npm_ci)
    running = await start_http_service(embedder, simulator, tmp_path / "data")
    yield running
    await running.close()


async def run_script(base_url: str) -> dict[str, Any]:
    assert NODE is not None
    done = await asyncio.to_thread(
        subprocess.run,
        [NODE, "openai_door.mjs", base_url],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_the_node_sdk_streams_reads_headers_and_gets_a_404(door: HttpService) -> None:
    seen = await run_script(door.base_url)
    stream, replay = seen["stream"], seen["replay"]
    assert "sourdough" in stream["content"]
    assert stream["final"]["finishReason"] == "stop"
    assert stream["final"]["extension"]["cache_status"] == "miss"
    assert stream["usage"]["completion_tokens"] > 0
    assert replay["content"] == stream["content"]
    assert replay["final"]["extension"]["cache_status"] == "exact_hit"
    miss, paraphrase = seen["miss"], seen["paraphrase"]
    assert miss["status"] == "miss" and miss["extension"]["cost_usd"] > 0
    assert paraphrase["status"] == "semantic_hit"
    assert paraphrase["content"] == miss["content"]
    assert paraphrase["requestId"] == paraphrase["extension"]["request_id"]
    assert seen["notFound"] == {"isNotFound": True, "status": 404, "code": "model_not_found"}
