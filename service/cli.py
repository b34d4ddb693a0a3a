"""The `semcache` command: serve, call the service, and run the upstream simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.config import Settings
from service.logs import configure_logging

log = structlog.get_logger(__name__)

_POLICIES = {
    "default": pb.CACHE_POLICY_DEFAULT,
    "bypass": pb.CACHE_POLICY_BYPASS,
    "refresh": pb.CACHE_POLICY_REFRESH,
    "no-store": pb.CACHE_POLICY_NO_STORE,
}


async def _serve(settings: Settings) -> None:
    from service.app import build_app, load_embedder
    from service.server import serve_until_signalled
    from service.simulator import SimulatorConfig, UpstreamSimulator

    simulator: UpstreamSimulator | None = None
    if not settings.upstream_base_url:
        simulator = UpstreamSimulator(SimulatorConfig())
        await simulator.start()
        settings = settings.model_copy(update={"upstream_base_url": simulator.base_url})
        log.warning(
            "no upstream configured (SEMCACHE_UPSTREAM_BASE_URL); answering from the built-in"
            " simulator",
            simulator=simulator.base_url,
        )
    log.info("loading embedding model", backend=settings.embedding_backend)
    embedder = await asyncio.to_thread(load_embedder, settings)
    app = await build_app(settings, embedder)
    try:
        await serve_until_signalled(app, settings)
    finally:
        if simulator is not None:
            await simulator.stop()


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(_serve(settings))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from service.simulator import SimulatorConfig, parse_fault_spec, serve_forever

    configure_logging("console", "info")
    try:
        faults = dict(parse_fault_spec(spec) for spec in args.fault)
    except ValueError as error:
        print(f"semcache simulate-upstream: {error}", file=sys.stderr)
        return 2
    config = SimulatorConfig(
        ttft_ms=args.ttft_ms,
        ms_per_token=args.ms_per_token,
        faults=faults,
        seed=args.seed,
        api_key=args.api_key,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, args.host, args.port))
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    from benchmarks.latency import DEFAULT_DATA, run

    env = {"SEMCACHE_EMBEDDING_BACKEND": args.embedding_backend} if args.embedding_backend else {}
    table = run(Path(args.out), args.pairs, Path(args.data or DEFAULT_DATA), args.target, env)
    print(table)
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from benchmarks.quality import DATASETS, run
    from service.embedding.factory import build_embedder

    configure_logging("console", "warning")
    settings = Settings()
    embedder = build_embedder(
        args.embedding_backend or settings.embedding_backend,
        settings.embedding_model_path,
        settings.embedding_cache_dir,
        settings.embedding_threads,
    )
    datasets = args.datasets or sorted(DATASETS)
    print(run(Path(args.out), embedder, datasets))
    return 0


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", args.tenant),)


def _print_completion(response: pb.CompleteResponse, round_trip_ms: float) -> None:
    status = pb.CacheStatus.Name(response.cache_status).removeprefix("CACHE_STATUS_").lower()
    print(response.content)
    print(
        f"-- cache={status} similarity={response.similarity:.3f} model={response.model}"
        f" service={response.latency_ms:.1f}ms round_trip={round_trip_ms:.1f}ms"
        f" cost=${response.cost_usd:.6f} saved=${response.cost_saved_usd:.6f}",
        file=sys.stderr,
    )


def _complete_request(args: argparse.Namespace) -> pb.CompleteRequest:
    request = pb.CompleteRequest(
        prompt=args.prompt,
        model=args.model or "",
        namespace=args.namespace or "",
        cache_policy=_POLICIES[args.policy],
    )
    if args.temperature is not None:
        request.temperature = args.temperature
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    return request


async def _complete(args: argparse.Namespace) -> None:
    request = _complete_request(args)
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        started = time.perf_counter()
        if not args.stream:
            response = await stub.Complete(
                request, metadata=_metadata(args), timeout=args.timeout_s
            )
            _print_completion(response, (time.perf_counter() - started) * 1000)
            return
        async for event in stub.StreamComplete(
            request, metadata=_metadata(args), timeout=args.timeout_s
        ):
            if event.HasField("final"):
                print(file=sys.stdout)
                final = pb.CompleteResponse()
                final.CopyFrom(event.final)
                final.content = ""
                _print_completion(final, (time.perf_counter() - started) * 1000)
            else:
                print(event.delta, end="", flush=True)


async def _stats(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        response = await stub.GetCacheStats(
            pb.GetCacheStatsRequest(namespace=args.namespace or ""),
            metadata=_metadata(args),
            timeout=args.timeout_s,
        )
    print(response)


async def _invalidate(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        response = await stub.InvalidateCache(
            pb.InvalidateCacheRequest(
                namespace=args.namespace or "",
                model=args.model or "",
                older_than_s=args.older_than_s,
                all=args.all,
            ),
            metadata=_metadata(args),
            timeout=args.timeout_s,
        )
    print(f"deleted {response.deleted_entries} entries")


def _run_client(coroutine_fn: object, args: argparse.Namespace) -> int:
    try:
        asyncio.run(coroutine_fn(args))  # type: ignore[operator]
    except grpc.aio.AioRpcError as error:
        print(f"semcache: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:50051", help="service address host:port")
    parser.add_argument("--tenant", default="default", help="sent as x-tenant-id metadata")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="the call's deadline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC service (configured by SEMCACHE_*)")
    serve.set_defaults(run=_cmd_serve)

    complete = commands.add_parser("complete", help="ask the running service one question")
    complete.add_argument("prompt")
    complete.add_argument("--model", help="model to use; default: the service chooses")
    complete.add_argument("--namespace", help="cache namespace; default: 'default'")
    complete.add_argument("--temperature", type=float)
    complete.add_argument("--max-tokens", type=int)
    complete.add_argument("--policy", choices=sorted(_POLICIES), default="default")
    complete.add_argument("--stream", action="store_true", help="use StreamComplete")
    _client_arguments(complete)
    complete.set_defaults(run=lambda a: _run_client(_complete, a))

    stats = commands.add_parser("stats", help="cache statistics for a tenant")
    stats.add_argument("--namespace", help="count entries of this namespace only")
    _client_arguments(stats)
    stats.set_defaults(run=lambda a: _run_client(_stats, a))

    invalidate = commands.add_parser("invalidate", help="delete cached entries of a tenant")
    invalidate.add_argument("--namespace")
    invalidate.add_argument("--model")
    invalidate.add_argument("--older-than-s", type=int, default=0)
    invalidate.add_argument("--all", action="store_true", help="delete every entry of the tenant")
    _client_arguments(invalidate)
    invalidate.set_defaults(run=lambda a: _run_client(_invalidate, a))

    bench = commands.add_parser("bench", help="benchmarks (see the README's Benchmarks section)")
    benches = bench.add_subparsers(dest="bench", required=True)
    latency = benches.add_parser(
        "latency", help="p50/p95 of miss, exact hit and semantic hit at concurrency 1"
    )
    latency.add_argument("--pairs", type=int, default=200, help="duplicate pairs to ask")
    latency.add_argument("--data", help="qqp-style JSONL; default ../shared/data/qqp_dev.jsonl")
    latency.add_argument("--out", default="bench-results", help="folder for JSON and Markdown")
    latency.add_argument("--target", help="measure this running service instead of starting one")
    latency.add_argument("--embedding-backend", choices=["torch", "onnx-int8", "onnx-fp32"])
    latency.set_defaults(run=_cmd_bench_latency)

    quality = benches.add_parser(
        "quality", help="served vs wrongly served on qqp_dev and fow-cache, threshold vs guard"
    )
    quality.add_argument("--datasets", nargs="*", choices=["qqp", "fow-pairs", "fow-conv"])
    quality.add_argument("--out", default="bench-results", help="folder for JSON, Markdown, PNG")
    quality.add_argument("--embedding-backend", choices=["torch", "onnx-int8", "onnx-fp32"])
    quality.set_defaults(run=_cmd_bench_quality)

    simulate = commands.add_parser(
        "simulate-upstream", help="run the OpenAI-compatible upstream simulator"
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    simulate.add_argument("--ttft-ms", type=float, help="time to first token, all models")
    simulate.add_argument("--ms-per-token", type=float, help="time per token, all models")
    simulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE,...",
        help="inject faults, e.g. 'gpt-4o:error_rate=0.3' or '*:rate_limit_rate=0.1'",
    )
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--api-key", help="require this bearer key")
    simulate.set_defaults(run=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `semcache` console script."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
