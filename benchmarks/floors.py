"""Floors: what this machine does at best, measured in the same run as the results they scale.

Absolute times say little across machines (and this one is shared), so every
latency and throughput report also gives two floors and its results as
ratios to them:

* **health**: the gRPC health check (`grpc.health.v1.Health/Check`, a no-op
  RPC) through the same server, or for in-process benchmarks a bare grpc.aio
  server in this process, at the same concurrency as the phase it scales:
  round trip p50 / p95 and checks per second. A cache hit cannot beat it.
* **embedder**: the service's embedder (backend from `--embedding-backend`,
  intra-op threads from `SEMCACHE_EMBEDDING_THREADS`), one text at a time
  from `SEMCACHE_EMBEDDING_WORKERS` threads as the service runs it, in this
  process on the same cores: time per text p50 / p95 and texts per second.
  A semantic hit or a miss embeds one text.

Floors are measured in bursts between the phases they scale (a burst before
each phase), or call by call in the sequential benchmarks, so load from other
processes falls on both; a report pools every burst of a kind. `bench load`
takes its concurrency-1 health floor call by call between a phase's requests
(a burst of health checks runs back to back on warm caches and reads faster
than one between requests), but its embedder floor in bursts: a text
embedded in this process between requests pushes the service's model out of
the shared caches and slows the request it is meant to scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks.report import Row, latency_summary, markdown_table

HEALTH_BURST = 200
EMBED_BURST = 24
TIMEOUT_S = 30.0


@dataclass
class Pool:
    """Samples of one floor (ms each) and the wall time their bursts took."""

    samples_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, samples_ms: Sequence[float], wall_s: float) -> None:
        self.samples_ms += samples_ms
        self.wall_s += wall_s

    def rate_per_s(self) -> float:
        return round(len(self.samples_ms) / self.wall_s, 1) if self.wall_s else 0.0


async def health_check_ms(stub: health_pb2_grpc.HealthStub) -> float:
    """One health check's round trip, in ms."""
    started = time.perf_counter()
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return (time.perf_counter() - started) * 1000


async def health_burst(
    channel: grpc.aio.Channel, concurrency: int, n: int
) -> tuple[list[float], float]:
    """`n` health checks with `concurrency` in flight: round trips (ms) and wall time (s)."""
    stub = health_pb2_grpc.HealthStub(channel)
    samples: list[float] = []
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            samples.append(await health_check_ms(stub))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    return samples, time.perf_counter() - started


def embed_one_ms(embedder: Any, text: str) -> float:
    """One text embedded on its own, in ms."""
    started = time.perf_counter()
    embedder.embed([text])
    return (time.perf_counter() - started) * 1000


def embed_burst(embedder: Any, texts: Sequence[str], workers: int = 1) -> tuple[list[float], float]:
    """Each text embedded alone, from `workers` threads: times (ms) and wall time (s)."""
    started = time.perf_counter()
    if workers <= 1:
        samples = [embed_one_ms(embedder, text) for text in texts]
    else:
        with ThreadPoolExecutor(workers) as pool:
            samples = list(pool.map(lambda text: embed_one_ms(embedder, text), texts))
    return samples, time.perf_counter() - started


class FloorRecorder:
    """Collects health and embedder floors over a run; rows and ratios for the report.

    The embedder is warmed up on a few of `texts` first; those runs are not samples.
    """

    def __init__(self, embedder: Any | None, texts: Sequence[str], workers: int = 1) -> None:
        self.embedder = embedder
        self.texts = list(texts) or ["What is a semantic cache?"]
        self.workers = workers
        self.health: dict[int, Pool] = {}
        self.embed = Pool()
        self._next_text = 0
        for text in self.texts[:3]:
            self.warm_up(text)

    async def health_burst(
        self, channel: grpc.aio.Channel, concurrency: int, n: int = HEALTH_BURST
    ) -> None:
        """Measure `n` health checks at `concurrency` and pool them."""
        samples, wall_s = await health_burst(channel, concurrency, n)
        self.health.setdefault(concurrency, Pool()).add(samples, wall_s)

    async def health_once(self, channel: grpc.aio.Channel) -> None:
        """One health check at concurrency 1, pooled (a call-by-call floor)."""
        self.add_health(1, await health_check_ms(health_pb2_grpc.HealthStub(channel)))

    def add_health(self, concurrency: int, round_trip_ms: float) -> None:
        """Pool one sequential health check (the call-by-call benchmarks)."""
        self.health.setdefault(concurrency, Pool()).add([round_trip_ms], round_trip_ms / 1000)

    def embed_burst(self, n: int = EMBED_BURST) -> None:
        """Embed the next `n` texts one at a time (blocking) and pool them."""
        if self.embedder is None:
            return
        texts = [self._text() for _ in range(n)]
        self.embed.add(*embed_burst(self.embedder, texts, self.workers))

    async def embed_burst_async(self, n: int = EMBED_BURST) -> None:
        """`embed_burst` on a thread, so an event loop stays free meanwhile."""
        await asyncio.to_thread(self.embed_burst, n)

    def add_embed(self, text: str) -> None:
        """Pool one text embedded alone (the call-by-call benchmarks)."""
        if self.embedder is not None:
            elapsed_ms = embed_one_ms(self.embedder, text)
            self.embed.add([elapsed_ms], elapsed_ms / 1000)

    def warm_up(self, text: str) -> None:
        """Embed `text` once without recording it (first runs are slower)."""
        if self.embedder is not None:
            embed_one_ms(self.embedder, text)

    def _text(self) -> str:
        text = self.texts[self._next_text % len(self.texts)]
        self._next_text += 1
        return text

    def health_row(self, concurrency: int) -> Row:
        """Health floor at `concurrency`: round trip p50/p95 (ms), checks/s, count."""
        pool = self.health.get(concurrency, Pool())
        summary = latency_summary(pool.samples_ms)
        return {
            "concurrency": concurrency,
            "health_checks": len(pool.samples_ms),
            "health_p50_ms": summary["p50_ms"],
            "health_p95_ms": summary["p95_ms"],
            "health_rps": pool.rate_per_s(),
        }

    def embed_row(self) -> Row:
        """Embedder floor: time per text p50/p95 (ms), texts/s, count, how it ran."""
        summary = latency_summary(self.embed.samples_ms)
        return {
            "embedder": getattr(self.embedder, "model_id", "none"),
            "workers": self.workers,
            "texts": len(self.embed.samples_ms),
            "embed_p50_ms": summary["p50_ms"],
            "embed_p95_ms": summary["p95_ms"],
            "embed_texts_per_s": self.embed.rate_per_s(),
        }

    def report(self) -> dict[str, Any]:
        """Both floors, for a results file."""
        return {
            "health": [self.health_row(c) for c in sorted(self.health)],
            "embedder": self.embed_row(),
        }


def ratio(value: Any, floor: Any) -> float | str:
    """`value / floor` to 2 decimals (2 significant digits under 0.1); "" without a floor."""
    if not isinstance(value, int | float) or not isinstance(floor, int | float) or not floor:
        return ""
    quotient = value / floor
    return round(quotient, 2) if abs(quotient) >= 0.1 else float(f"{quotient:.2g}")


def health_of(floors: dict[str, Any], concurrency: int) -> Row:
    """The health floor row at `concurrency` in a `FloorRecorder.report()`; {} if none."""
    return next((r for r in floors["health"] if r["concurrency"] == concurrency), {})


HEALTH_COLUMNS = (
    ("concurrency", "concurrency"),
    ("health_checks", "health checks"),
    ("health_p50_ms", "round trip p50 ms"),
    ("health_p95_ms", "round trip p95 ms"),
    ("health_rps", "checks/s"),
)
EMBED_COLUMNS = (
    ("embedder", "embedder"),
    ("workers", "threads"),
    ("texts", "texts"),
    ("embed_p50_ms", "per text p50 ms"),
    ("embed_p95_ms", "per text p95 ms"),
    ("embed_texts_per_s", "texts/s"),
)


def floors_markdown(floors: dict[str, Any], when: str = "between its phases") -> str:
    """The two floor tables of a report, with a line saying what they are and `when` taken."""
    parts = [f"Floors, measured in this run {when}:"]
    if floors["health"]:
        parts.append(markdown_table(floors["health"], HEALTH_COLUMNS))
    if floors["embedder"]["texts"]:
        parts.append(markdown_table([floors["embedder"]], EMBED_COLUMNS))
    return "\n\n".join(parts)


@contextlib.asynccontextmanager
async def bare_health_server() -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio server in this process serving only health, and a channel to it.

    For the in-process benchmarks (compare, scale): their health floor is this
    no-op RPC's round trip on the same machine.
    """
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def embedder_from_settings(backend: str | None) -> tuple[Any, int]:
    """The embedder a service started with `backend` would load, and its worker count.

    `None` means the configured one (`SEMCACHE_EMBEDDING_BACKEND`). Intra-op
    threads and workers come from the usual settings too
    (`SEMCACHE_EMBEDDING_THREADS`, `SEMCACHE_EMBEDDING_WORKERS`).
    """
    from service.config import Settings
    from service.embedding.factory import build_embedder
    from service.logs import configure_logging

    configure_logging("console", "warning")
    settings = Settings()
    embedder = build_embedder(
        backend or settings.embedding_backend,  # type: ignore[arg-type]
        settings.embedding_model_path,
        settings.embedding_cache_dir,
        settings.embedding_threads,
    )
    return embedder, settings.embedding_workers
