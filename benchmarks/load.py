"""Load benchmark: a Zipf-skewed mix of repeated and paraphrased questions through gRPC.

    semcache bench load [--pairs 2000] [--requests 1000] [--concurrency 1 8 64 256]

Questions are the duplicate pairs of qqp_dev.jsonl (`benchmarks.data`), read in
place. A request picks pair i with probability proportional to 1 / (i+1)^s
(Zipf, s = 1.1 by default) and asks its `a`, or with probability
`paraphrase_p` its paraphrase `b`. Each (mode, concurrency) phase runs in its
own namespace, so every phase starts cold and sees the same workload.

A second part measures hits on their own: the `a` of every pair is cached, the
paraphrases that come back as semantic hits are kept, then exact hits (the
`a`s again) and semantic hits (those `b`s, with CACHE_POLICY_NO_STORE) are
asked at each concurrency. The service is driven only through the generated
grpc.aio stubs; its process is sampled with psutil for CPU and memory.

Before each phase, a burst of gRPC health checks at the phase's concurrency
and a burst of single-text embeddings measure the floors
(`benchmarks.floors`); the report states each phase as ratios to them. A
phase at concurrency 1 takes its health floor between its own requests
instead: one check after each request (a burst runs back to back on warm
caches and reads faster than a check between requests); that time is left
out of the phase's wall time and of the service's mean CPU. The embedder
floor stays a burst: a text embedded here between requests pushes the
service's model out of the shared caches and slowed the semantic hits it
scales more than it slowed itself. With `--target`, the embedder floor is
still measured in this process: on the service's cores only if it runs on
this machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc
from tqdm import tqdm

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder, health_check_ms
from benchmarks.load_report import add_ratios, markdown, plot, targets
from benchmarks.procs import run_stack
from benchmarks.report import (
    ProcessSampler,
    ResourceUsage,
    Row,
    latency_summary,
    machine_note,
    progress,
    write_results,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

CONCURRENCY = (1, 8, 64, 256)
MODES = ("unary", "stream")
OUTCOMES = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_EXACT_HIT: "exact_hit",
    pb.CACHE_STATUS_SEMANTIC_HIT: "semantic_hit",
    pb.CACHE_STATUS_BYPASS: "bypass",
}
TIMEOUT_S = 60.0


def load_pairs(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """Duplicate pairs (a, b) of a qqp-style JSON-lines file, in file order."""
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["same_answer"]:
                pairs.append((row["a"], row["b"]))
            if limit is not None and len(pairs) == limit:
                break
    return pairs


@dataclass(frozen=True)
class Ask:
    """One question of a workload: which pair it came from, and whether it is the paraphrase."""

    prompt: str
    pair: int
    paraphrase: bool


class ZipfWorkload:
    """Questions drawn with a Zipf-like skew over distinct pairs; deterministic for a seed.

    Pair i (0-based, in the order given) has weight 1 / (i + 1) ** s; a drawn
    pair is asked as its `b` with probability `paraphrase_p`, else as its `a`.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        s: float = 1.1,
        paraphrase_p: float = 0.3,
        seed: int = 0,
    ) -> None:
        if not pairs:
            raise ValueError("a workload needs at least one question pair")
        weights = 1.0 / np.arange(1, len(pairs) + 1, dtype=np.float64) ** s
        self._probabilities = weights / weights.sum()
        self._pairs = list(pairs)
        self._paraphrase_p = paraphrase_p
        self._seed = seed

    def draw(self, n: int) -> list[Ask]:
        """The first `n` questions of this workload (the same list for the same seed)."""
        rng = np.random.default_rng(self._seed)
        indexes = rng.choice(len(self._pairs), size=n, p=self._probabilities)
        paraphrase = rng.random(n) < self._paraphrase_p
        return [
            Ask(self._pairs[i][1] if b else self._pairs[i][0], int(i), bool(b))
            for i, b in zip(indexes.tolist(), paraphrase.tolist(), strict=True)
        ]


@dataclass
class Sample:
    """What one call saw: outcome (cache status or "error"), latencies, costs."""

    outcome: str
    round_trip_ms: float
    service_ms: float = 0.0
    first_event_ms: float = 0.0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    error: str = ""


def _sample(response: pb.CompleteResponse, round_trip_ms: float, first_ms: float) -> Sample:
    return Sample(
        OUTCOMES.get(response.cache_status, "other"),
        round_trip_ms,
        response.latency_ms,
        first_ms,
        response.cost_usd,
        response.cost_saved_usd,
    )


async def call_unary(stub: pb_grpc.SemanticCacheServiceStub, request: pb.CompleteRequest) -> Sample:
    """One `Complete` call, timed from the client's side."""
    started = time.perf_counter()
    try:
        response = await stub.Complete(request, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return Sample("error", _ms_since(started), error=error.code().name)
    elapsed_ms = _ms_since(started)
    return _sample(response, elapsed_ms, elapsed_ms)


async def call_stream(
    stub: pb_grpc.SemanticCacheServiceStub, request: pb.CompleteRequest
) -> Sample:
    """One `StreamComplete` call read to its end; also times the first event."""
    started = time.perf_counter()
    first_ms = 0.0
    final: pb.CompleteResponse | None = None
    try:
        async for event in stub.StreamComplete(request, timeout=TIMEOUT_S):
            first_ms = first_ms or _ms_since(started)
            if event.HasField("final"):
                final = event.final
    except grpc.aio.AioRpcError as error:
        return Sample("error", _ms_since(started), error=error.code().name)
    if final is None:
        return Sample("error", _ms_since(started), error="stream ended without a final message")
    return _sample(final, _ms_since(started), first_ms)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


@dataclass
class PhaseResult:
    """The samples of one phase, its wall time, and the service's resource use meanwhile."""

    name: str
    mode: str
    concurrency: int
    samples: list[Sample]
    wall_s: float
    resources: ResourceUsage = field(default_factory=ResourceUsage)

    def summary(self) -> Row:
        """Throughput, hit rate, cost, latency overall and per outcome, CPU and memory."""
        ok = [s for s in self.samples if s.outcome != "error"]
        hits = [s for s in ok if s.outcome in ("exact_hit", "semantic_hit")]
        row: Row = {
            "phase": self.name,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "errors": len(self.samples) - len(ok),
            "wall_s": round(self.wall_s, 3),
            "throughput_rps": round(len(ok) / self.wall_s, 1) if self.wall_s else 0.0,
            "hit_rate": round(len(hits) / len(ok), 4) if ok else 0.0,
            "cost_spent_usd": round(sum(s.cost_usd for s in ok), 6),
            "cost_saved_usd": round(sum(s.cost_saved_usd for s in ok), 6),
            **latency_summary([s.round_trip_ms for s in ok]),
            "by_outcome": self._by_outcome(ok),
            **self.resources.as_row(),
        }
        if self.mode == "stream":
            row["first_event_p50_ms"] = latency_summary([s.first_event_ms for s in ok])["p50_ms"]
        return row

    @staticmethod
    def _by_outcome(samples: Sequence[Sample]) -> dict[str, Row]:
        outcomes: dict[str, Row] = {}
        for outcome in sorted({s.outcome for s in samples}):
            chosen = [s for s in samples if s.outcome == outcome]
            outcomes[outcome] = {
                "count": len(chosen),
                **latency_summary([s.round_trip_ms for s in chosen]),
                "service_p50_ms": latency_summary([s.service_ms for s in chosen])["p50_ms"],
            }
        return outcomes


Between = Callable[[pb.CompleteRequest], Awaitable[None]]


async def drive(
    stub: pb_grpc.SemanticCacheServiceStub,
    requests: Sequence[pb.CompleteRequest],
    concurrency: int,
    stream: bool,
    label: str = "",
    between: Between | None = None,
) -> tuple[list[Sample], float]:
    """Send `requests` with at most `concurrency` in flight; samples in request order, wall s.

    `between` (concurrency 1 only) runs after each request, e.g. the floors;
    its time is not part of the wall time returned.
    """
    if between is not None and concurrency != 1:
        raise ValueError("work between requests needs concurrency 1")
    samples: list[Sample | None] = [None] * len(requests)
    order: Iterator[int] = iter(range(len(requests)))
    call = call_stream if stream else call_unary
    progress = tqdm(total=len(requests), desc=label, unit="req", leave=False, mininterval=0.5)
    between_s = 0.0

    async def worker() -> None:
        nonlocal between_s
        for index in order:
            samples[index] = await call(stub, requests[index])
            progress.update()
            if between is not None:
                started_between = time.perf_counter()
                await between(requests[index])
                between_s += time.perf_counter() - started_between

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
    wall_s = time.perf_counter() - started - between_s
    progress.close()
    return [s for s in samples if s is not None], wall_s


def requests_for(
    prompts: Sequence[str],
    namespace: str,
    policy: pb.CachePolicy.ValueType = pb.CACHE_POLICY_DEFAULT,
) -> list[pb.CompleteRequest]:
    return [pb.CompleteRequest(prompt=p, namespace=namespace, cache_policy=policy) for p in prompts]


async def measure_phase(
    stub: pb_grpc.SemanticCacheServiceStub,
    requests: Sequence[pb.CompleteRequest],
    *,
    name: str,
    concurrency: int,
    stream: bool,
    service_pid: int | None = None,
    between: Between | None = None,
) -> PhaseResult:
    """Run one phase, sampling the service process (when its pid is known) meanwhile.

    `between` runs after each request (concurrency 1 only), outside the phase's
    wall time and the service's mean CPU.
    """
    sampler = ProcessSampler(service_pid) if service_pid is not None else None
    label = f"{name} {'stream' if stream else 'unary'} c={concurrency}"
    if between is not None and sampler is not None:
        between = _paused(sampler, between)
    with sampler if sampler is not None else nullcontext():
        samples, wall_s = await drive(stub, requests, concurrency, stream, label, between)
    resources = sampler.usage() if sampler is not None else ResourceUsage()
    return PhaseResult(
        name, "stream" if stream else "unary", concurrency, samples, wall_s, resources
    )


def _paused(sampler: ProcessSampler, between: Between) -> Between:
    async def paused(request: pb.CompleteRequest) -> None:
        with sampler.paused():
            await between(request)

    return paused


@dataclass(frozen=True)
class LoadConfig:
    """What one load run asks: sizes, the sweep, and the workload's shape."""

    pairs: int = 2000
    requests: int = 1000
    hit_requests: int = 1000
    concurrency: tuple[int, ...] = CONCURRENCY
    modes: tuple[str, ...] = MODES
    zipf_s: float = 1.1
    paraphrase_p: float = 0.3
    seed: int = 0


async def semantic_hit_prompts(
    stub: pb_grpc.SemanticCacheServiceStub,
    pairs: Sequence[tuple[str, str]],
    namespace: str,
    concurrency: int = 8,
) -> list[str]:
    """Cache every `a` in `namespace`; return the `b`s then answered as semantic hits."""
    await drive(stub, requests_for([a for a, _ in pairs], namespace), concurrency, False, "prime")
    return await _answered_as(stub, [b for _, b in pairs], namespace, "semantic_hit", concurrency)


async def exact_hit_prompts(
    stub: pb_grpc.SemanticCacheServiceStub,
    questions: Sequence[str],
    namespace: str,
    concurrency: int = 8,
) -> list[str]:
    """Of `questions` (already asked in `namespace`), those asked again that are exact hits.

    A question served from a neighbour when first asked was never stored under its
    own words: asked again it is a semantic hit, and an exact-hit phase with it
    would time the embedder too (3.4% of the `a`s did, in issue 13's runs).
    """
    return await _answered_as(stub, questions, namespace, "exact_hit", concurrency)


async def _answered_as(
    stub: pb_grpc.SemanticCacheServiceStub,
    prompts: Sequence[str],
    namespace: str,
    outcome: str,
    concurrency: int,
) -> list[str]:
    """Ask each of `prompts` once (NO_STORE); those whose answer's outcome is `outcome`."""
    probes = requests_for(prompts, namespace, pb.CACHE_POLICY_NO_STORE)
    samples, _ = await drive(stub, probes, concurrency, False, "probe")
    return [p for p, s in zip(prompts, samples, strict=True) if s.outcome == outcome]


def _cycled(prompts: Sequence[str], n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(prompts), n))


@dataclass
class Driver:
    """What every phase of one run shares: the stub, its channel, the floors, the service pid."""

    channel: grpc.aio.Channel
    floors: FloorRecorder
    service_pid: int | None

    @property
    def stub(self) -> pb_grpc.SemanticCacheServiceStub:
        return pb_grpc.SemanticCacheServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    async def phase(
        self, requests: Sequence[pb.CompleteRequest], name: str, mode: str, concurrency: int
    ) -> Row:
        """Floors at this concurrency, then the phase; its summary row.

        At concurrency 1 the health floor is taken between the phase's requests,
        not in a burst before it.
        """
        progress(f"load: {name} {mode} c={concurrency}, {len(requests)} requests")
        if concurrency != 1:
            await self.floors.health_burst(self.channel, concurrency, max(200, 2 * concurrency))
        await self.floors.embed_burst_async()
        result = await measure_phase(
            self.stub,
            requests,
            name=name,
            concurrency=concurrency,
            stream=mode == "stream",
            service_pid=self.service_pid,
            between=self.floors_between if concurrency == 1 else None,
        )
        return result.summary()

    async def floors_between(self, request: pb.CompleteRequest) -> None:
        """The health floor at concurrency 1: one check after each request."""
        self.floors.add_health(1, await health_check_ms(self.health))


async def run_workload(
    target: str,
    config: LoadConfig,
    pairs: Sequence[tuple[str, str]],
    floors: FloorRecorder,
    service_pid: int | None,
) -> dict[str, list[Row]]:
    """Every phase of the load benchmark against the service at `target`, floors between."""
    run_id = uuid.uuid4().hex[:8]
    asks = ZipfWorkload(pairs, config.zipf_s, config.paraphrase_p, config.seed).draw(
        config.requests
    )
    async with grpc.aio.insecure_channel(target) as channel:
        driver = Driver(channel, floors, service_pid)
        await drive(driver.stub, requests_for(["warm-up one"] * 2, f"w-{run_id}"), 1, False)
        zipf: list[Row] = []
        for mode, concurrency in itertools.product(config.modes, config.concurrency):
            namespace = f"zipf-{run_id}-{mode}-{concurrency}"
            requests = requests_for([a.prompt for a in asks], namespace)
            zipf.append(await driver.phase(requests, "zipf", mode, concurrency))
        hits = await _hit_phases(driver, pairs, f"hits-{run_id}", config)
        await floors.embed_burst_async()
    return {"zipf": zipf, "hits": hits}


async def _hit_phases(
    driver: Driver, pairs: Sequence[tuple[str, str]], namespace: str, config: LoadConfig
) -> list[Row]:
    progress(f"load: caching {len(pairs)} questions and probing their paraphrases")
    paraphrases = await semantic_hit_prompts(driver.stub, pairs, namespace)
    exact_prompts = await exact_hit_prompts(driver.stub, [a for a, _ in pairs], namespace)
    exact = requests_for(_cycled(exact_prompts, config.hit_requests), namespace)
    semantic = requests_for(
        _cycled(paraphrases, config.hit_requests), namespace, pb.CACHE_POLICY_NO_STORE
    )
    rows: list[Row] = []
    for mode, concurrency in itertools.product(config.modes, config.concurrency):
        for name, requests in (("exact_hit", exact), ("semantic_hit", semantic)):
            if requests:
                row = await driver.phase(requests, name, mode, concurrency)
                rows.append({**row, "distinct_prompts": len(set(r.prompt for r in requests))})
    return rows


def run(
    out_dir: Path,
    config: LoadConfig,
    target: str | None = None,
    service_pid: int | None = None,
    env: dict[str, str] | None = None,
    data: Path | None = None,
) -> str:
    """Run the load benchmark, write load.json / load.md / PNGs under `out_dir`, return the table.

    With no `target` it starts the simulator (zero latency) and `semcache serve`
    as separate processes, with `env` added to the service's environment. The
    embedder floor is measured in this process with the service's backend.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    from benchmarks.floors import embedder_from_settings

    env = env or {}
    pairs = load_pairs(data_file(data), config.pairs)
    embedder, workers = embedder_from_settings(env.get("SEMCACHE_EMBEDDING_BACKEND"))
    floors = FloorRecorder(embedder, [b for _, b in pairs], workers)
    if target is not None:
        results = asyncio.run(run_workload(target, config, pairs, floors, service_pid))
    else:
        with (
            tempfile.TemporaryDirectory() as workdir,
            run_stack(Path(workdir), extra_env=env) as stack,
        ):
            results = asyncio.run(
                run_workload(stack.target, config, pairs, floors, stack.service_pid)
            )
    report: dict[str, Any] = {
        "config": config.__dict__,
        "service_env": dict(sorted(env.items())),
        "embedding_backend": embedder.model_id,
        "machine": machine_note(),
        "floors": floors.report(),
        **results,
    }
    add_ratios(report)
    report["targets"] = targets(report)
    table = markdown(report)
    write_results(out_dir, "load", report, table)
    plot(report, out_dir)
    return table
