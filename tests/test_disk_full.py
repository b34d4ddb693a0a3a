"""A full disk pauses storing; it never kills the server (it used to: SIGBUS, no log line).

Each test runs `semcache serve` in a subprocess on a real tmpfs, so a crash
shows as a dead process instead of taking pytest down with it. Mounting needs
root (CI runs as root); elsewhere the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="mounts a tmpfs to fill a disk: needs Linux and root (CI runs as root)",
)

REPO = Path(__file__).resolve().parents[1]
BIG_PROMPT_BYTES = 30_000
START_TIMEOUT_S = 180.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the embedding model for every server these tests start."""
    return tmp_path_factory.mktemp("onnx-models")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts tmpfs file systems of a given size in MiB; unmounts them afterwards."""
    mounted: list[Path] = []

    def mount(size_mib: int) -> Path:
        target = tmp_path / f"tmpfs-{len(mounted)}"
        target.mkdir()
        options = f"size={size_mib}m"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0)) as sim:
        yield sim


class Served:
    """`semcache serve` in a subprocess (this checkout's code), with JSON logs in a
    file and a gRPC stub."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"serve-{len(list(log_dir.glob('serve-*.log')))}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"], cwd=REPO, env=env, stderr=self._log
        )
        self.grpc_port = 0
        self.metrics_port = 0
        self.channel: grpc.aio.Channel | None = None

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def started(self) -> pb_grpc.SemanticCacheServiceStub:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.grpc_port:
            assert self.process.poll() is None, self._died()
            assert time.monotonic() < deadline, "semcache serve did not start"
            await asyncio.sleep(0.2)
            for line in self.logs():
                if line["event"] == "metrics at /metrics":
                    self.metrics_port = int(line["port"])
                if line["event"] == "semcache serving":
                    self.grpc_port = int(line["address"].rsplit(":", 1)[1])
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        return pb_grpc.SemanticCacheServiceStub(self.channel)

    def _died(self) -> str:
        tail = self.log_path.read_text(errors="replace")[-2000:]
        return f"semcache serve exited with {self.process.returncode}:\n{tail}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not among the metrics")

    async def stop(self) -> int:
        if self.channel is not None:
            await self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, 60)
        self._log.close()
        return code


def _env(
    data_dir: Path, upstream: UpstreamSimulator, model_cache: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OPENAI_"))}
    env.update(
        SEMCACHE_DATA_DIR=str(data_dir),
        SEMCACHE_UPSTREAM_BASE_URL=upstream.base_url,
        SEMCACHE_UPSTREAM_API_KEY="test-key",
        SEMCACHE_GRPC_PORT="0",
        SEMCACHE_METRICS_PORT="0",
        SEMCACHE_LOG_FORMAT="json",
        SEMCACHE_EMBEDDING_CACHE_DIR=str(model_cache),
        SEMCACHE_PURGE_INTERVAL_S="0.2",
        **extra,
    )
    return env


def _big_prompt(i: int) -> str:
    words = f"Question {i}: summarise the following log excerpt number {i}. "
    return (words * (BIG_PROMPT_BYTES // len(words) + 1))[:BIG_PROMPT_BYTES]


async def _ask(stub: pb_grpc.SemanticCacheServiceStub, prompt: str) -> pb.CompleteResponse:
    return await stub.Complete(pb.CompleteRequest(prompt=prompt), timeout=60)


async def _ask_many(stub: pb_grpc.SemanticCacheServiceStub, count: int) -> list[int]:
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> int:
        async with limit:
            return (await _ask(stub, _big_prompt(i))).cache_status

    return await asyncio.gather(*(one(i) for i in range(count)))


async def _stats(stub: pb_grpc.SemanticCacheServiceStub) -> pb.GetCacheStatsResponse:
    return await stub.GetCacheStats(pb.GetCacheStatsRequest(), timeout=30)


def _fill(mount: Path, store_dir: Path, room_left_bytes: int) -> Path:
    """A file that leaves the store `room_left_bytes` (free space minus what the
    store's sparse files may still claim)."""
    from service.cache.disk import unfilled_bytes

    free = shutil.disk_usage(mount).free
    filler = mount / "filler"
    size = free - unfilled_bytes(store_dir) - room_left_bytes
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


async def _until(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.2)


async def test_a_20_mib_disk_keeps_answering_without_storing(
    tmpfs: Callable[[int], Path], upstream: UpstreamSimulator, model_cache: Path
) -> None:
    """The issue's reproduction: 150 misses of 30 KB prompts on a 20 MiB data dir."""
    mount = tmpfs(20)
    served = Served(_env(mount / "data", upstream, model_cache), mount.parent)
    try:
        stub = await served.started()
        statuses = await _ask_many(stub, 150)
        assert served.alive()
        assert statuses == [pb.CACHE_STATUS_MISS] * 150
        stats = await _stats(stub)
        assert stats.storing_paused and "disk full" in stats.storing_paused_reason
        assert served.metric("semcache_store_writable") == 0
        assert served.metric('semcache_cache_stores_skipped_total{reason="disk_full"}') == 150
    finally:
        code = await served.stop()
    assert code == 0, served._died()
    warnings = [line for line in served.logs() if line["level"] == "warning"]
    assert any("disk" in line.get("reason", "") for line in warnings)


async def test_full_disk_pauses_storing_then_restarts_and_resumes(
    tmpfs: Callable[[int], Path], upstream: UpstreamSimulator, model_cache: Path
) -> None:
    mount = tmpfs(256)
    data, store_dir = mount / "data", mount / "data" / "semcache"
    env = _env(data, upstream, model_cache, SEMCACHE_MIN_FREE_DISK_MB="32")
    served = Served(env, mount.parent)
    try:
        stub = await served.started()
        assert [await _ask(stub, f"Early question {i}?") for i in range(3)]
        assert (await _ask(stub, "Early question 0?")).cache_status == pb.CACHE_STATUS_EXACT_HIT

        filler = _fill(mount, store_dir, room_left_bytes=16 * MIB)  # under the 32 MiB kept free
        statuses = await _ask_many(stub, 150)
        assert served.alive()
        assert statuses == [pb.CACHE_STATUS_MISS] * 150
        assert (await _ask(stub, "Early question 1?")).cache_status == pb.CACHE_STATUS_EXACT_HIT
        stats = await _stats(stub)
        assert stats.storing_paused and "disk nearly full" in stats.storing_paused_reason
        assert served.metric("semcache_store_writable") == 0
        assert served.metric('semcache_cache_stores_skipped_total{reason="disk_full"}') > 0
        stored = stats.entries
    finally:
        code = await served.stop()
    assert code == 0, served._died()
    assert any(line["event"] == "cache storing paused" for line in served.logs())

    # A restart on the still-full directory: up, serving what is stored, still paused.
    served = Served(env, mount.parent)
    try:
        stub = await served.started()
        stats = await _stats(stub)
        assert stats.entries == stored  # nothing acknowledged was lost
        assert stats.storing_paused
        assert (await _ask(stub, "Early question 2?")).cache_status == pb.CACHE_STATUS_EXACT_HIT

        filler.unlink()  # space returns: storing resumes without a restart

        async def resumed() -> bool:
            return not (await _stats(stub)).storing_paused

        await _until(resumed, "storing resumes")
        assert served.metric("semcache_store_writable") == 1
        assert (await _ask(stub, "Late question?")).cache_status == pb.CACHE_STATUS_MISS
        assert (await _ask(stub, "Late question?")).cache_status == pb.CACHE_STATUS_EXACT_HIT
    finally:
        code = await served.stop()
    assert code == 0, served._died()


async def test_starts_on_a_disk_too_full_to_open_the_store_and_opens_it_later(
    tmpfs: Callable[[int], Path], upstream: UpstreamSimulator, model_cache: Path
) -> None:
    mount = tmpfs(256)
    data, store_dir = mount / "data", mount / "data" / "semcache"
    env = _env(data, upstream, model_cache, SEMCACHE_MIN_FREE_DISK_MB="32")
    served = Served(env, mount.parent)
    try:
        stub = await served.started()
        await _ask(stub, "Stored before the disk filled?")
    finally:
        code = await served.stop()
    assert code == 0, served._died()

    filler = _fill(mount, store_dir, room_left_bytes=-32 * MIB)  # opening could claim too much
    served = Served(env, mount.parent)
    try:
        stub = await served.started()
        answer = await _ask(stub, "Stored before the disk filled?")
        assert answer.cache_status == pb.CACHE_STATUS_MISS  # the store is closed, not lost
        stats = await _stats(stub)
        assert stats.storing_paused and "to open" in stats.storing_paused_reason

        filler.unlink()

        async def reopened() -> bool:
            answer = await _ask(stub, "Stored before the disk filled?")
            return bool(answer.cache_status == pb.CACHE_STATUS_EXACT_HIT)

        await _until(reopened, "the store opens and serves what it held")
        assert not (await _stats(stub)).storing_paused
        # Found from outside: "left closed" was logged again at every upkeep pass.
        said = [e for e in served.logs() if str(e.get("event")).startswith("cache store left")]
        assert len(said) == 1, said
    finally:
        code = await served.stop()
    assert code == 0, served._died()
