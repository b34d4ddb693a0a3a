"""The README's HTTP-door blocks (curl and the openai SDK) run as written against the
service with its HTTP door, in-process; `localhost:8080` becomes the door's free port.
(tests/test_readme_snippets.py runs the other blocks, and lists these as run here.)"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service.embedding.base import Embedder
from tests.conftest import REPO
from tests.httpdoor import HttpService, start_http_service

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)
README_ADDRESS = "localhost:8080"
RUN_TIMEOUT_S = 120.0
BLOCKS = [
    (language, code)
    for language, code in BLOCK.findall(README)
    if README_ADDRESS in code and language in ("sh", "py")
]
# A comment on a line of its own that is the output a block promises: `# semantic_hit`,
# `# x-semcache-cache-status: semantic_hit`.
PROMISE = re.compile(r"^# ([\w-]+(?:: \w+)?)$", re.M)


@pytest_asyncio.fixture
async def door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    """A fresh service per block (the README's examples expect an empty cache)."""
    running = await start_http_service(embedder, simulator, tmp_path / "data")
    yield running
    await running.close()


def test_the_readme_has_http_door_blocks_in_both_forms() -> None:
    assert {language for language, _ in BLOCKS} == {"sh", "py"}


@pytest.mark.parametrize(
    ("language", "code"), BLOCKS, ids=[f"{lang}: {code[:40]}" for lang, code in BLOCKS]
)
async def test_http_door_block_runs(language: str, code: str, door: HttpService) -> None:
    code = code.replace(README_ADDRESS, f"127.0.0.1:{door.http.port}")
    shell = ["bash", "-euo", "pipefail"] if language == "sh" else [sys.executable]
    done = await asyncio.to_thread(
        subprocess.run,
        [*shell, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for promised in PROMISE.findall(code):
        assert promised.lower() in done.stdout.lower(), done.stdout
