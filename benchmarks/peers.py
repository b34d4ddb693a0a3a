"""semcache and a peer gateway side by side, on the same upstream, interleaved request by request.

    semcache bench peers [--peer litellm] [--requests 300] [--hit-set 100]
                         [--hit-requests 1024] [--concurrency 64] [--rounds 4]

One upstream simulator (zero latency) and, each in its own process, semcache
(asked through gRPC and through its OpenAI-compatible HTTP door) and the peer
(the LiteLLM proxy with its in-memory cache, or with `--peer semcache` a
second semcache standing in for it; `benchmarks.peers_gateways`). Phases:

1. **bypass**: `requests` distinct questions, each sent straight to the
   simulator and through every gateway with its cache bypassed (no lookup, no
   store). Added latency: the median over questions of (gateway − direct).
2. **miss**: `requests` other distinct questions, cache on: a real miss (lookup,
   upstream call, store); added latency as above.
3. **exact hit, c=1**: `hit_set` questions cached in every gateway, then asked
   again, cycled up to `requests` asks per gateway.
4. **exact hit, c=`concurrency`**: the same questions, `hit_requests` asks per
   gateway at `concurrency` in flight, in `rounds` blocks that alternate between
   the gateways; hits/s is their asks over their blocks' wall time.

Phases 1-3 run one call at a time, each question's calls in an order rotated
question by question, so load from other processes falls on every gateway
alike; phase 4 interleaves blocks (a throughput needs the machine to itself).
Every gateway gets the same `warmup` calls first. A call whose outcome is not
the one its phase asks for (an error, a hit on a bypass…) is left out of the
latencies and counted.

CPU seconds per 1,000 requests: the gateway process's user + system CPU time
(psutil) over the phase, per request it served. In phases 1-3 one semcache
process serves both doors, so its figure is shared by them; in phase 4 each
block is one gateway's alone.

Floors (`benchmarks.floors`): gRPC health checks through semcache at c=1 and
at `concurrency`, and the embedder's single-text time in this process; rows
give their p50 and hits/s as ratios to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder
from benchmarks.load import Sample
from benchmarks.overhead import distinct_questions
from benchmarks.peers_gateways import (
    PEER_KINDS,
    Gateway,
    Peer,
    direct_gateway,
    grpc_gateway,
    http_session,
    peer_gateway,
    run_peer,
    semcache_http_gateway,
    wait_http,
)
from benchmarks.peers_report import PhaseTally, build_report, markdown
from benchmarks.procs import Stack, embedding_memo_off, free_port, run_stack
from benchmarks.report import machine_note, progress, write_results
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

LITELLM_CACHE_ENTRIES = 200  # LiteLLM's in-memory cache keeps at most this many answers


@dataclass(frozen=True)
class PeersConfig:
    """What one run asks: the peer, sample sizes, and the throughput phase's shape."""

    peer: str = "litellm"
    requests: int = 300
    hit_set: int = 100
    hit_requests: int = 1024
    concurrency: int = 64
    rounds: int = 4
    warmup: int = 20

    def questions_needed(self) -> int:
        """Distinct questions a run asks: bypassed, missed, exact hits, warm-up."""
        return 2 * self.requests + self.hit_set + self.warmup

    def check(self) -> None:
        """Refuse sizes the run cannot honour, with what to change.

        Raises:
            SystemExit: a one-line message (the command exits 1 without a traceback).
        """
        if self.peer not in PEER_KINDS:
            raise SystemExit(f"semcache bench peers: --peer must be one of {PEER_KINDS}")
        sizes = (self.requests, self.hit_set, self.hit_requests, self.concurrency, self.rounds)
        if min(sizes) < 1 or self.warmup < 0:
            raise SystemExit("semcache bench peers: every size must be at least 1 (--warmup 0)")
        if self.peer == "litellm" and self.hit_set > LITELLM_CACHE_ENTRIES // 2:
            raise SystemExit(
                f"semcache bench peers: --hit-set {self.hit_set} is too many for LiteLLM's"
                f" in-memory cache of {LITELLM_CACHE_ENTRIES} entries; use at most"
                f" {LITELLM_CACHE_ENTRIES // 2}"
            )


@dataclass
class Gateways:
    """Every gateway of a run, and the floors' channel into semcache."""

    direct: Gateway
    caches: list[Gateway]
    channel: grpc.aio.Channel
    floors: FloorRecorder

    @property
    def all(self) -> list[Gateway]:
        return [self.direct, *self.caches]


@dataclass
class CpuClock:
    """CPU seconds (user + system) of the gateway processes, read together."""

    pids: set[int] = field(default_factory=set)

    def read(self) -> dict[int, float]:
        import psutil

        return {pid: _cpu_s(psutil.Process(pid)) for pid in self.pids}


def _cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _rotated(items: Sequence[Gateway], by: int) -> list[Gateway]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


async def interleaved(
    gateways: Sequence[Gateway],
    prompts: Sequence[str],
    policy: str,
    label: str,
    floor: Callable[[], Awaitable[None]] | None = None,
) -> PhaseTally:
    """Each prompt through every gateway in turn (order rotated per prompt), one at a time,
    then `floor()` (a health check taken call by call, as latency and load take theirs:
    found from outside, a burst before the phase read faster, a best-case floor)."""
    clock = CpuClock({g.pid for g in gateways if g.pid is not None})
    tally = PhaseTally({g.name: [] for g in gateways})
    before = clock.read()
    for index, prompt in enumerate(tqdm(prompts, desc=label, leave=False, mininterval=0.5)):
        for gateway in _rotated(gateways, index):
            tally.samples[gateway.name].append(await gateway.ask(prompt, policy))
        if floor is not None:
            await floor()
    served = {g.name: len(tally.samples[g.name]) for g in gateways}
    tally.add_cpu(gateways, before, clock.read(), served)
    return tally


async def drive(gateway: Gateway, prompts: Sequence[str], concurrency: int) -> list[Sample]:
    """Ask every prompt through `gateway` with at most `concurrency` in flight."""
    samples: list[Sample] = []
    left = iter(prompts)

    async def worker() -> None:
        for prompt in left:
            samples.append(await gateway.ask(prompt, "default"))

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(prompts))))))
    return samples


async def in_blocks(
    gateways: Sequence[Gateway], prompts: Sequence[str], concurrency: int, rounds: int
) -> PhaseTally:
    """`prompts` through each gateway in `rounds` blocks that alternate between the gateways."""
    tally = PhaseTally({g.name: [] for g in gateways})
    size = -(-len(prompts) // rounds)
    for round_index in range(rounds):
        block = prompts[round_index * size : (round_index + 1) * size]
        for gateway in _rotated(gateways, round_index) if block else []:
            clock = CpuClock({gateway.pid} if gateway.pid is not None else set())
            before, started = clock.read(), time.perf_counter()
            tally.samples[gateway.name] += await drive(gateway, block, concurrency)
            tally.wall_s[gateway.name] = tally.wall_s.get(gateway.name, 0.0) + (
                time.perf_counter() - started
            )
            tally.add_cpu([gateway], before, clock.read(), {gateway.name: len(block)})
    return tally


def _cycled(prompts: Sequence[str], n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(prompts), n))


async def warm_up(gateways: Gateways, prompts: Sequence[str]) -> None:
    """The same unmeasured calls through every gateway: bypassed, a miss, its exact hit."""
    await interleaved(gateways.all, prompts, "bypass", "warm-up bypass")
    await interleaved(gateways.caches, prompts, "refresh", "warm-up miss")
    await interleaved(gateways.caches, prompts, "default", "warm-up hit")


async def sequential_phases(
    gateways: Gateways, bypassed: Sequence[str], missed: Sequence[str]
) -> dict[str, PhaseTally]:
    """Bypassed calls, then misses: every question through every gateway, one at a time."""
    phases: dict[str, PhaseTally] = {}
    for name, prompts, policy in (("bypass", bypassed, "bypass"), ("miss", missed, "default")):
        progress(
            f"peers: {name}, {len(prompts)} questions through {len(gateways.all)} gateways each"
        )
        await gateways.floors.embed_burst_async()
        floor = functools.partial(gateways.floors.health_once, gateways.channel)
        phases[name] = await interleaved(gateways.all, prompts, policy, name, floor)
    return phases


async def hit_phases(
    gateways: Gateways, hits: Sequence[str], config: PeersConfig
) -> dict[str, PhaseTally]:
    """`hits` stored in every gateway, then asked again at c=1 and at `config.concurrency`."""
    floors, channel, caches = gateways.floors, gateways.channel, gateways.caches
    n, c = config.requests, config.concurrency
    progress(f"peers: caching {len(hits)} questions in every gateway, then {n} exact hits each")
    await interleaved(caches, hits, "refresh", "seed")
    floor = functools.partial(floors.health_once, channel)
    hits_c1 = await interleaved(caches, _cycled(hits, n), "default", "hit c=1", floor)
    phases = {"exact_hit_c1": hits_c1}
    progress(f"peers: exact hits at c={c}, {config.hit_requests} each in {config.rounds} blocks")
    await interleaved(caches, hits, "default", "re-seed")
    await floors.health_burst(channel, c, max(200, 2 * c))
    prompts = _cycled(hits, config.hit_requests)
    phases["exact_hit_cN"] = await in_blocks(caches, prompts, c, config.rounds)
    await floors.health_burst(channel, c, max(200, 2 * c))
    return phases


async def measure(
    gateways: Gateways, config: PeersConfig, prompts: Sequence[str]
) -> dict[str, PhaseTally]:
    """Warm-up, then every phase with floors before each; the tallies by phase name.

    `prompts` holds, in order, the bypassed questions, the missed ones, the
    exact hits and the warm-up's (`PeersConfig.questions_needed`).
    """
    n, hit_set = config.requests, config.hit_set
    await warm_up(gateways, prompts[2 * n + hit_set :])
    phases = await sequential_phases(gateways, prompts[:n], prompts[n : 2 * n])
    return {**phases, **await hit_phases(gateways, prompts[2 * n : 2 * n + hit_set], config)}


@contextlib.asynccontextmanager
async def open_gateways(
    stack: Stack, http_url: str, peer: Peer, floors: FloorRecorder
) -> AsyncIterator[Gateways]:
    """Clients for every gateway (one connection pool each), closed when the block ends."""
    run_id = uuid.uuid4().hex[:8]
    async with (
        grpc.aio.insecure_channel(stack.target) as channel,
        http_session() as direct_http,
        http_session() as semcache_http,
        http_session() as peer_http,
    ):
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        pid = stack.service_pid
        caches = [
            grpc_gateway(stub, f"peers-grpc-{run_id}", pid, "semcache gRPC"),
            semcache_http_gateway(
                semcache_http, http_url, f"peers-http-{run_id}", pid, "semcache HTTP"
            ),
            peer_gateway(peer_http, peer, f"peers-peer-{run_id}"),
        ]
        yield Gateways(direct_gateway(direct_http, stack.upstream_url), caches, channel, floors)


def run(
    out_dir: Path, config: PeersConfig, env: dict[str, str] | None = None, data: Path | None = None
) -> str:
    """Start everything, measure, write peers.json / peers.md under `out_dir`; the tables.

    Raises:
        SystemExit: sizes the run cannot honour (`PeersConfig.check`).
        MissingDataError: the qqp-style data file is not there.
        RuntimeError, TimeoutError: a gateway did not start.
    """
    from benchmarks.floors import embedder_from_settings

    config.check()
    env = env or {}
    prompts = distinct_questions(config.questions_needed(), data_file(data))
    if len(prompts) < config.questions_needed():
        raise SystemExit(
            f"semcache bench peers: the data file has {len(prompts)} distinct questions and this"
            f" run needs {config.questions_needed()} (2 × --requests + --hit-set + --warmup)"
        )
    embedder, workers = embedder_from_settings(env.get("SEMCACHE_EMBEDDING_BACKEND"))
    floors = FloorRecorder(embedder, prompts, workers)
    http_port = free_port()
    # For semcache and a semcache stand-in alike: one process serves both doors, and
    # with the memo on the door asked second about a missed question reused the first
    # door's embedding (their order rotates, gRPC came first in three of four).
    env = embedding_memo_off(env)
    stack_env = {**env, "SEMCACHE_HTTP_PORT": str(http_port)}
    with (
        tempfile.TemporaryDirectory(prefix="semcache-peers-") as workdir,
        run_stack(Path(workdir) / "semcache", extra_env=stack_env) as stack,
    ):
        http_url = f"http://127.0.0.1:{http_port}/v1"
        wait_http(f"{http_url}/models", 60.0)
        progress(f"peers: semcache serving; starting the peer ({config.peer})")
        with run_peer(config.peer, Path(workdir), stack.upstream_url, env) as peer:
            phases = asyncio.run(_measure_all(stack, http_url, peer, floors, config, prompts))
            gateways = _gateway_note(stack, peer)
    report = build_report(phases, floors.report(), config.__dict__, gateways, peer.label)
    report["machine"] = machine_note()
    report["embedding_backend"] = embedder.model_id
    report["service_env"] = dict(sorted(env.items()))
    table = markdown(report)
    write_results(out_dir, "peers", report, table)
    return table


async def _measure_all(
    stack: Stack,
    http_url: str,
    peer: Peer,
    floors: FloorRecorder,
    config: PeersConfig,
    prompts: Sequence[str],
) -> dict[str, PhaseTally]:
    async with open_gateways(stack, http_url, peer, floors) as gateways:
        return await measure(gateways, config, prompts)


def _gateway_note(stack: Stack, peer: Peer) -> list[dict[str, Any]]:
    return [
        {"gateway": "semcache gRPC + semcache HTTP", "pid": stack.service_pid},
        {"gateway": peer.label, "kind": peer.kind, "pid": peer.pid},
    ]
