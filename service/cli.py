"""The `semcache` command: serve, call the service, and run the upstream simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.config import Settings
from service.embedding.factory import EMBEDDING_BACKENDS
from service.errors import StartupError
from service.startup import load_settings, one_line, settings_error, source_error
from service.urls import seconds_argument, target_argument

if TYPE_CHECKING:
    from semcache_client import Answer, SemcacheClient
    from semcache_client.types import RequestOptions
    from service.app import App
from service.logs import configure_logging
from service.routing.strategy import STRATEGIES

log = structlog.get_logger(__name__)

# The apparatus beside the server, not in its wheel: what to install when it is missing.
_SIMULATOR_MISSING = (
    "the upstream simulator is not installed: it is its own package, semcache-simulator;"
    " from a checkout, `pip install -e ./simulator` (`make install` includes it)"
)
_BENCHMARKS_MISSING = (
    "the benchmarks are not installed: they live in the source tree, not in the server's"
    " wheel; from a checkout, `pip install -e .` (or `make install`) puts them on the path"
)
_POLICIES = ("default", "bypass", "refresh", "no-store")
_ROLES = ("system", "user", "assistant")
_SERVE_EPILOG = """\
Settings come from, in this order of precedence:
  1. environment variables SEMCACHE_<SETTING> (e.g. SEMCACHE_GRPC_PORT=50051);
     OPENAI_BASE_URL and OPENAI_API_KEY stand in for the upstream's URL and key.
     No .env file is read.
  2. the built-in defaults.
Two settings name files read at start-up: SEMCACHE_CATALOGUE_PATH (the model
catalogue: providers, models, prices) and SEMCACHE_API_KEYS_FILE (the hashed API
keys; unset = open mode). Every setting, its default and what it does: the
README's Configuration table. An invalid setting is one line on stderr, exit 1.
"""


def freeze_startup_objects() -> None:
    """Move everything start-up built (the model, the tokenizer, modules, settings:
    about 137k objects) out of the cyclic garbage collector's reach.

    They live as long as the process, yet every full collection walked them all:
    30-40 ms with the whole service paused, every in-flight call with it. After
    `gc.freeze()` a full collection walks only what serving allocated since.
    Start-up's own garbage is collected first, so nothing freed is kept.
    """
    gc.collect()
    gc.freeze()


def apply_switch_interval(settings: Settings) -> None:
    """Set Python's GIL switch interval to `switch_interval_ms` (0: leave Python's own).

    The embedding thread needs the GIL back after each model run; while the event
    loop is busy it waits up to one interval for it (5 ms by Python's default,
    three model runs' worth), and semantic hits per second follow that wait.
    """
    if settings.switch_interval_ms:
        sys.setswitchinterval(settings.switch_interval_ms / 1000)


async def _serve(settings: Settings, simulate: bool) -> None:
    """Check what can be checked at once, load the model, serve, then close it all.

    Raises:
        StartupError: the service cannot start as configured.
    """
    from service.serve import serve_until_signalled
    from service.startup import data_dir_lock
    from service.transport.grpc.server import security_from

    security = security_from(settings)
    apply_switch_interval(settings)
    with data_dir_lock(settings):
        async with _upstream(settings, simulate) as settings:
            app = await _build(settings, simulated=simulate)
            freeze_startup_objects()
            try:
                await serve_until_signalled(app, settings, security)
            finally:
                await app.aclose()
    log.info("stopped")


@contextlib.asynccontextmanager
async def _upstream(settings: Settings, simulate: bool) -> AsyncIterator[Settings]:
    """`settings`, pointed at the built-in simulator when asked to simulate.

    Raises:
        StartupError: no upstream is configured and simulating was not asked for,
            or both were.
    """
    from service.errors import StartupError

    if not simulate:
        if not settings.upstream_base_url:
            raise StartupError(
                "no upstream configured: set SEMCACHE_UPSTREAM_BASE_URL (or OPENAI_BASE_URL)"
                " to an OpenAI-compatible provider, or pass --simulate to answer from the"
                " built-in simulator"
            )
        yield settings
        return
    if settings.upstream_base_url:
        raise StartupError(
            "--simulate with an upstream configured: unset SEMCACHE_UPSTREAM_BASE_URL"
            " (and OPENAI_BASE_URL), or drop --simulate"
        )
    async with _simulator() as base_url:
        yield settings.model_copy(update={"upstream_base_url": base_url})


@contextlib.asynccontextmanager
async def _simulator() -> AsyncIterator[str]:
    """The upstream simulator, started for `--simulate`: its base URL.

    Raises:
        StartupError: the simulator's package (semcache-simulator) is not installed.
    """
    try:
        from semcache_simulator import SimulatorConfig, UpstreamSimulator
    except ImportError as error:
        if not _is_missing(error, "semcache_simulator"):
            raise
        raise StartupError(f"--simulate: {_SIMULATOR_MISSING}") from error

    simulator = UpstreamSimulator(SimulatorConfig())
    await simulator.start()
    log.warning(
        "answering from the built-in simulator (--simulate): its answers are simulated,"
        " and cached apart from any real upstream's",
        simulator=simulator.base_url,
    )
    try:
        yield simulator.base_url
    finally:
        await simulator.stop()


async def _build(settings: Settings, simulated: bool) -> App:
    """The service's parts, with the embedding model loaded off the event loop.

    Raises:
        StartupError: a file, model or setting it needs is missing or invalid.
    """
    from service.app import build_app, load_embedder
    from service.startup import startup_error_for

    log.info("loading embedding model", backend=settings.embedding_backend)
    try:
        embedder = await asyncio.to_thread(load_embedder, settings)
        return await build_app(settings, embedder, os.environ, simulated=simulated)
    except Exception as error:
        known = startup_error_for(error, settings)
        if known is None:
            raise
        raise known from error


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve until signalled; a start-up failure is one line on stderr and status 1."""
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        asyncio.run(_serve(settings, args.simulate))
    except StartupError as error:
        return _serve_failed(one_line(error))
    except KeyboardInterrupt:
        return _serve_failed("interrupted (Ctrl-C) while starting; nothing was served", 130)
    except Exception as error:
        log.exception("semcache serve failed")
        return _serve_failed(
            f"unexpected {type(error).__name__}: {one_line(error)}; the traceback above says where"
        )
    return 0


def _serve_failed(line: str, status: int = 1) -> int:
    print(f"semcache serve: {line}", file=sys.stderr)
    return status


def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        from semcache_simulator import (
            SimulatorConfig,
            load_answer_stream,
            parse_fault_spec,
            serve_forever,
        )
    except ImportError as error:
        if not _is_missing(error, "semcache_simulator"):
            raise
        print(f"semcache simulate-upstream: {_SIMULATOR_MISSING}", file=sys.stderr)
        return 1

    configure_logging("console", "info")
    try:
        faults = dict(parse_fault_spec(spec) for spec in args.fault)
        answers = load_answer_stream(Path(args.answers)) if args.answers else {}
        config = SimulatorConfig(
            ttft_ms=args.ttft_ms,
            ms_per_token=args.ms_per_token,
            faults=faults,
            seed=args.seed,
            api_key=args.api_key,
            answers=answers,
        )
    except ValueError as error:  # UnicodeDecodeError too: a file that is not UTF-8
        print(f"semcache simulate-upstream: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(config, args.host, args.port))
    except OSError as error:  # the port is taken, or the host is not this machine's
        print(
            f"semcache simulate-upstream: cannot listen on {args.host}:{args.port}:"
            f" {error.strerror or error}; choose another --port or --host",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    from benchmarks.commands import error_budget_env
    from benchmarks.latency import run

    env = {"SEMCACHE_EMBEDDING_BACKEND": args.embedding_backend} if args.embedding_backend else {}
    env.update(error_budget_env(args))
    data = Path(args.data) if args.data else None
    table = run(Path(args.out), args.pairs, data, args.target, env)
    print(table)
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from benchmarks.quality import DATASETS, run
    from service.embedding.factory import build_embedder

    configure_logging("console", "warning")
    settings = load_settings()
    embedder = build_embedder(
        args.embedding_backend or settings.embedding_backend,
        settings.embedding_model_path,
        settings.embedding_cache_dir,
        settings.embedding_threads,
    )
    datasets = args.datasets or sorted(DATASETS)
    data = Path(args.data) if args.data else None
    if args.compare_backend:
        from benchmarks.quality import compare_embedders

        other = build_embedder(
            args.compare_backend,
            settings.embedding_model_path,
            settings.embedding_cache_dir,
            settings.embedding_threads,
        )
        print(compare_embedders(Path(args.out), embedder, other, datasets, data, args.limit))
        return 0
    print(run(Path(args.out), embedder, datasets, data, args.limit))
    return 0


def _cmd_bench_resilience(args: argparse.Namespace) -> int:
    from benchmarks.resilience import run

    print(run(Path(args.out), args.requests, args.error_rate, args.ttft_ms))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from service.cache.calibrate import DEFAULT_DATA, run, run_prior
    from service.embedding.base import Embedder
    from service.embedding.factory import EmbeddingBackend, build_embedder

    configure_logging("console", "warning")
    if args.pairs and not args.prior:
        print(
            "semcache calibrate: --pairs adds pairs to the prior's fit: add --prior",
            file=sys.stderr,
        )
        return 2
    settings = load_settings()
    backend: EmbeddingBackend = args.embedding_backend or ("onnx-int8" if args.prior else "torch")
    data = Path(args.data) if args.data else DEFAULT_DATA
    if not args.data and settings.bench_data_dir is not None:  # the benchmarks' data setting
        data = settings.bench_data_dir / DEFAULT_DATA.name
    out = Path(args.out) if args.out else None

    def load_embedder() -> Embedder:
        return build_embedder(
            backend,
            settings.embedding_model_path,
            settings.embedding_cache_dir,
            settings.embedding_threads,
        )

    if not args.prior:
        return run(data, out, load_embedder, f"semcache calibrate --embedding-backend {backend}")
    options = [f"--data {args.data}"] if args.data else []
    options += [f"--pairs {p}" for p in args.pairs]
    command = " ".join(["semcache calibrate --prior", *options])
    if backend != "onnx-int8":
        command += f" --embedding-backend {backend}"
    return run_prior([data, *map(Path, args.pairs)], out, load_embedder, command)


def _cmd_route_eval(args: argparse.Namespace) -> int:
    from service.app import build_settings_router, load_embedder
    from service.llm.catalogue import load_catalogue
    from service.routing.evaluate import load_labelled, route_eval

    configure_logging("console", "warning")
    settings = load_settings()
    try:
        load_labelled(Path(args.file))  # read first: a bad file is told before the model loads
    except ValueError as error:
        print(f"semcache route-eval: {one_line(error)}", file=sys.stderr)
        return 2
    if args.strategy:
        settings = settings.model_copy(update={"routing_strategy": args.strategy})
    catalogue = load_catalogue(settings.catalogue_path, os.environ)
    embedder = load_embedder(settings)
    router = build_settings_router(settings, catalogue, embedder)
    print(route_eval(Path(args.file), router, catalogue, embedder.embed, args.output_tokens))
    return 0


def _client(args: argparse.Namespace) -> SemcacheClient:
    """The client for `--target`, or for SEMCACHE_TARGET when it is absent.

    Raises:
        StartupError: `--target` is absent and a SEMCACHE_* setting is invalid, or
            `--tls-ca` cannot be read.
    """
    from semcache_client import SemcacheClient
    from service.transport.grpc.healthcheck import Trust, read_pem_roots

    if args.tenant is not None and args.api_key is not None:
        # The key decides the tenant; a --tenant the server ignores would act on the
        # key's own (found from outside: `invalidate --all --tenant other` emptied it).
        raise ValueError(
            "--tenant is for open mode: with --api-key the key's tenant is used; drop"
            " --tenant (an admin key acts on another tenant with --for-tenant)"
        )
    target = args.target or load_settings().target
    credentials = None
    if args.tls_ca is not None:
        try:
            roots = read_pem_roots(args.tls_ca)
        except ValueError as error:
            raise StartupError(f"--tls-ca: {error}") from error
        credentials = Trust(roots).credentials()
    return SemcacheClient(
        target,
        tenant=args.tenant,
        api_key=args.api_key,
        timeout_s=args.timeout_s,
        credentials=credentials,
    )


def _print_answer(answer: Answer, round_trip_ms: float) -> None:
    print(
        f"-- cache={answer.cache_status.value} similarity={answer.similarity:.3f}"
        f" detail={answer.cache_detail or '-'} model={answer.model} tier={answer.tier or '-'}"
        f" route={answer.route_reason or '-'} service={answer.latency_ms:.1f}ms"
        f" round_trip={round_trip_ms:.1f}ms cost=${answer.cost_usd:.6f}"
        f" saved=${answer.cost_saved_usd:.6f} p_wrong={answer.error_probability:.4f}"
        f" entry={answer.entry_id or '-'} request={answer.request_id}",
        file=sys.stderr,
    )


def _token_count(text: str) -> int:
    """A count of tokens: a whole number, 0 or more (found from outside: -5 was taken,
    and routing "saved -5.9%").

    Raises:
        argparse.ArgumentTypeError: it is not one.
    """
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (0 or more)")
    return int(text)


def _message(text: str) -> tuple[str, str]:
    """`ROLE:TEXT` of `--message`, as (role, text).

    Raises:
        argparse.ArgumentTypeError: no colon, or a role the API does not know.
    """
    role, colon, content = text.partition(":")
    if not colon or role not in _ROLES:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not ROLE:TEXT with ROLE one of {', '.join(_ROLES)}"
        )
    return role, content


def _messages(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The conversation: --system, the --message turns in order, then the prompt
    as the last user message; None when neither flag is given (a plain prompt)."""
    if args.system is None and not args.message:
        return None
    system = [] if args.system is None else [("system", args.system)]
    return [*system, *args.message, ("user", args.prompt)]


def _complete_options(args: argparse.Namespace) -> RequestOptions:
    """The request's fields from the flags named after them; unset flags stay unset."""
    return {
        "messages": _messages(args),
        "model": args.model,
        "namespace": args.namespace,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "stop": args.stop,
        "ttl_s": args.ttl_s,
        "similarity_min": args.similarity_min,
        "max_error_rate": args.max_error_rate,
        "cache_policy": args.cache_policy,
    }


def _cmd_complete(args: argparse.Namespace) -> int:
    options = _complete_options(args)
    prompt = None if options["messages"] else args.prompt
    with _client(args) as client:
        started = time.perf_counter()
        if not args.stream:
            answer = client.complete(prompt, **options)
            print(answer.content)
            _print_answer(answer, (time.perf_counter() - started) * 1000)
            return 0
        stream = client.stream(prompt, **options)
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        if stream.answer is not None:
            _print_answer(stream.answer, (time.perf_counter() - started) * 1000)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats(args.namespace, all_tenants=args.all_tenants)
    for each in stats.tenants if args.all_tenants else (stats,):
        print(
            f"tenant={each.tenant} entries={each.entries} exact_hits={each.exact_hits}"
            f" semantic_hits={each.semantic_hits} misses={each.misses} bypasses={each.bypasses}"
            f" hit_rate={each.hit_rate:.3f} cost_saved_usd={each.cost_saved_usd:.6f}"
            f" cost_spent_usd={each.cost_spent_usd:.6f}"
        )
        for row in each.verification:
            print(
                f"  namespace={row.namespace} requests={row.requests}"
                f" semantic_served={row.semantic_served}"
                f" expected_error_rate={row.expected_error_rate:.4f}"
                f" audited_error_rate={row.audited_error_rate:.4f}"
                f" [{row.audited_error_rate_low:.4f}, {row.audited_error_rate_high:.4f}]"
                f" explored={row.explored} audits={row.audits} audit_wrong={row.audit_wrong}"
                f" judged_same={row.judged_same} judged_wrong={row.judged_wrong}"
                f" feedback_correct={row.feedback_correct} feedback_wrong={row.feedback_wrong}"
            )
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        receipt = client.submit_feedback(
            verdict=args.verdict, entry_id=args.entry_id, request_id=args.request_id
        )
    print(f"recorded {args.verdict} on entry {receipt.entry_id} (score {receipt.score:.4f})")
    return 0


def _cmd_invalidate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        deleted = client.invalidate(
            namespace=args.namespace,
            model=args.model,
            older_than_s=args.older_than_s or None,
            all=args.all,
            tenant=args.for_tenant,
            all_tenants=args.all_tenants,
        )
    print(f"deleted {deleted} {_entries(deleted)}")
    return 0


def _entries(count: int) -> str:
    return "entry" if count == 1 else "entries"


def _cmd_import(args: argparse.Namespace) -> int:
    from service.seed_import import import_lines, read_lines

    lines = read_lines(Path(args.file))
    with _client(args) as client:
        totals = import_lines(
            client,
            lines,
            args.batch_size,
            {"namespace": args.namespace, "ttl_s": args.ttl_s, "model": args.model},
            sys.stderr,
        )
    print(f"stored {totals.stored} {_entries(totals.stored)}, {totals.failed} failed")
    return 1 if totals.failed else 0


def _cmd_health(args: argparse.Namespace) -> int:
    from service.transport.grpc import healthcheck

    return healthcheck.run(args)


def _cmd_keys_add(args: argparse.Namespace) -> int:
    from service.auth import add_key

    try:
        key = add_key(Path(args.file), args.tenant, args.role, args.name)
    except ValueError as error:  # a bad tenant, name or keys file: what to change
        print(f"semcache keys add: {one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"semcache keys add: cannot write {args.file}: {error.strerror}", file=sys.stderr)
        return 1
    print(key)
    print(
        f"added key {args.name!r} (tenant {args.tenant}, role {args.role}) to {args.file};"
        " the key above is shown once and stored only as a hash",
        file=sys.stderr,
    )
    return 0


def _run_client(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from semcache_client import SemcacheError

    try:
        return command(args)
    except SemcacheError as error:
        hint = ""
        if error.code.name == "UNAVAILABLE" and args.tls_ca is None and "closed" in error.details:
            hint = " (a server with TLS closes plain connections: pass --tls-ca)"
        print(f"semcache: {error.code.name}: {error.details}{hint}", file=sys.stderr)
        return 1
    except ValueError as error:  # an argument the client refuses, e.g. a non-ASCII key
        print(f"semcache: {error}", file=sys.stderr)
        return 2


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        type=target_argument,
        help="service address host:port; default: SEMCACHE_TARGET (localhost:50051)",
    )
    parser.add_argument(
        "--tenant", help="sent as x-tenant-id (open mode only: with --api-key, refused)"
    )
    parser.add_argument("--api-key", help="sent as authorization: Bearer KEY")
    parser.add_argument(
        "--timeout-s", type=seconds_argument, default=30.0, help="the call's deadline"
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="PEM roots to trust: call over TLS (--target must name a host the server's"
        " certificate carries)",
    )


def _add_complete_arguments(parser: argparse.ArgumentParser) -> None:
    """`semcache complete`'s flags, each the dash form of a CompleteRequest field."""
    parser.add_argument("--system", help="a system prompt, sent as the first message")
    parser.add_argument(
        "--message",
        type=_message,
        action="append",
        default=[],
        metavar="ROLE:TEXT",
        help="an earlier turn (user or assistant), repeatable, in order; before the prompt",
    )
    parser.add_argument("--model", help="model to use; default: the service chooses")
    parser.add_argument("--namespace", help="cache namespace; default: 'default'")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument(
        "--stop", action="append", default=[], help="a stop sequence; repeatable (up to 4)"
    )
    parser.add_argument(
        "--ttl-s", type=int, help="seconds the answer stays cached; default: SEMCACHE_TTL_S"
    )
    parser.add_argument(
        "--similarity-min", type=float, help="raise the cosine a cached question must reach"
    )
    parser.add_argument("--max-error-rate", type=float, help="tighten the error budget (0-1)")
    parser.add_argument("--cache-policy", choices=_POLICIES, default="default")
    parser.add_argument(  # the flag's old name
        "--policy",
        choices=_POLICIES,
        dest="cache_policy",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--stream", action="store_true", help="use StreamComplete")


def _add_health_arguments(parser: argparse.ArgumentParser) -> None:
    from service.transport.grpc.healthcheck import add_arguments

    add_arguments(parser)


def _add_latency_command(benches: Any) -> None:
    from benchmarks.commands import data_argument, error_budget_argument

    latency = benches.add_parser(
        "latency", help="p50/p95 of miss, exact hit and semantic hit at concurrency 1"
    )
    latency.add_argument("--pairs", type=int, default=200, help="duplicate pairs to ask")
    latency.add_argument("--out", default="bench-results", help="folder for JSON and Markdown")
    latency.add_argument("--target", help="measure this running service instead of starting one")
    latency.add_argument("--embedding-backend", choices=EMBEDDING_BACKENDS)
    error_budget_argument(
        latency,
        "under the budget a fresh cache explores most first paraphrases, and few semantic hits"
        " would be timed",
    )
    data_argument(latency)
    latency.set_defaults(run=_cmd_bench_latency)


def _add_bench_commands(benches: Any) -> None:
    """`semcache bench …`: imported only when asked for, so no other command loads them."""
    from benchmarks.commands import add_bench_commands, data_argument

    _add_latency_command(benches)

    quality = benches.add_parser(
        "quality", help="served vs wrongly served: threshold, guard, error budget"
    )
    quality.add_argument("--datasets", nargs="*", choices=["qqp", "fow-pairs", "fow-conv"])
    data_argument(quality)
    quality.add_argument("--limit", type=int, help="only the first N pairs of each data set")
    quality.add_argument("--out", default="bench-results", help="folder for JSON, Markdown, PNG")
    quality.add_argument("--embedding-backend", choices=EMBEDDING_BACKENDS)
    quality.add_argument(
        "--compare-backend",
        choices=EMBEDDING_BACKENDS,
        help="instead of the sweep: how often this embedder makes the same decisions",
    )
    quality.set_defaults(run=_cmd_bench_quality)

    add_bench_commands(benches)  # load, overhead, compare, gptcache, scale

    resilience = benches.add_parser(
        "resilience", help="success rate and latency under injected upstream failures, on vs off"
    )
    resilience.add_argument("--requests", type=int, default=300)
    resilience.add_argument("--error-rate", type=float, default=0.3)
    resilience.add_argument("--ttft-ms", type=float, default=20.0)
    resilience.add_argument("--out", default="bench-results")
    resilience.set_defaults(run=_cmd_bench_resilience)


def build_parser(with_benchmarks: bool = True) -> argparse.ArgumentParser:
    """The `semcache` command line; `with_benchmarks=False` leaves `bench`'s
    subcommands out, so that parsing imports nothing of the benchmarks."""
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_command(commands)
    _add_client_commands(commands)
    _add_operator_commands(commands)
    _add_measuring_commands(commands, with_benchmarks)
    _add_calibrate_and_simulate_commands(commands)
    return parser


def _add_serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the gRPC service (configured by SEMCACHE_*)",
        description="Run the service until SIGTERM or SIGINT.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--simulate",
        action="store_true",
        help="answer from the built-in OpenAI-compatible simulator (no upstream configured);"
        " its answers are cached apart from any real upstream's",
    )
    serve.set_defaults(run=_cmd_serve)


def _add_client_commands(commands: Any) -> None:
    """complete, stats, invalidate and import: calls to a running service."""
    complete = commands.add_parser("complete", help="ask the running service one question")
    complete.add_argument("prompt", help="the question: the last user message")
    _add_complete_arguments(complete)
    _client_arguments(complete)
    complete.set_defaults(run=lambda a: _run_client(_cmd_complete, a))

    stats = commands.add_parser("stats", help="cache statistics for a tenant")
    stats.add_argument("--namespace", help="count entries of this namespace only")
    stats.add_argument("--all-tenants", action="store_true", help="every tenant's (admin)")
    _client_arguments(stats)
    stats.set_defaults(run=lambda a: _run_client(_cmd_stats, a))

    invalidate = commands.add_parser("invalidate", help="delete cached entries of a tenant")
    invalidate.add_argument("--namespace")
    invalidate.add_argument("--model")
    invalidate.add_argument("--older-than-s", type=int, default=0)
    invalidate.add_argument("--all", action="store_true", help="delete every entry of the tenant")
    whose = invalidate.add_mutually_exclusive_group()
    whose.add_argument("--for-tenant", help="act on this tenant (admin)")
    whose.add_argument("--all-tenants", action="store_true", help="every tenant (admin)")
    _client_arguments(invalidate)
    invalidate.set_defaults(run=lambda a: _run_client(_cmd_invalidate, a))

    seed = commands.add_parser("import", help="seed curated answers from a JSONL file")
    seed.add_argument("file", help='one {"question": ..., "answer": ...} per line')
    seed.add_argument("--namespace", help="store them in this namespace (default: default)")
    seed.add_argument("--ttl-s", type=int, help="seconds they stay servable (SEMCACHE_TTL_S)")
    seed.add_argument("--model", help="the model they stand for (default: the auto scope)")
    seed.add_argument("--batch-size", type=int, default=100, help="entries per PutEntries call")
    _client_arguments(seed)
    seed.set_defaults(run=lambda a: _run_client(_cmd_import, a))
    _add_feedback_command(commands)


def _add_feedback_command(commands: Any) -> None:
    feedback = commands.add_parser("feedback", help="tell the cache an answer was right or wrong")
    feedback.add_argument("--entry-id", help="the answer's entry id (entry= of complete)")
    feedback.add_argument("--request-id", help="the answer's request id (same replica)")
    feedback.add_argument("--verdict", choices=("correct", "wrong"), required=True)
    _client_arguments(feedback)
    feedback.set_defaults(run=lambda a: _run_client(_cmd_feedback, a))


def _add_operator_commands(commands: Any) -> None:
    health = commands.add_parser(
        "health", help="exit 0 when the local server reports SERVING (the container probe)"
    )
    _add_health_arguments(health)
    health.set_defaults(run=_cmd_health)

    keys = commands.add_parser("keys", help="manage the API keys file")
    key_commands = keys.add_subparsers(dest="keys", required=True)
    keys_add = key_commands.add_parser("add", help="create a key; prints it once, stores its hash")
    keys_add.add_argument("--file", required=True, help="the keys file (SEMCACHE_API_KEYS_FILE)")
    keys_add.add_argument("--tenant", required=True)
    keys_add.add_argument("--role", choices=["client", "admin"], default="client")
    keys_add.add_argument("--name", required=True, help="a label for the key, e.g. the app")
    keys_add.set_defaults(run=_cmd_keys_add)


def _add_measuring_commands(commands: Any, with_benchmarks: bool) -> None:
    bench = commands.add_parser("bench", help="benchmarks (see the README's Benchmarks section)")
    if with_benchmarks:
        _add_bench_commands(bench.add_subparsers(dest="bench", required=True))

    route = commands.add_parser(
        "route-eval", help="routing accuracy, confusion matrix and projected cost on a file"
    )
    route.add_argument("file", help='JSONL, one {"prompt": ..., "tier": ...} per line')
    route.add_argument("--strategy", choices=STRATEGIES)
    route.add_argument(
        "--output-tokens",
        type=_token_count,
        default=250,
        help="assumed answer length for the cost",
    )
    route.set_defaults(run=_cmd_route_eval)


def _add_calibrate_and_simulate_commands(commands: Any) -> None:
    _add_calibrate_command(commands)
    simulate = commands.add_parser(
        "simulate-upstream", help="run the OpenAI-compatible upstream simulator"
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
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
    simulate.add_argument(
        "--answers",
        metavar="FILE",
        help='a {"q", "cluster"} JSONL stream: answer each question in it with its'
        " cluster's canned answer, ANSWER[<cluster>]: ... (others as without it)",
    )
    simulate.set_defaults(run=_cmd_simulate)


def _add_calibrate_command(commands: Any) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="refit the near-miss guard's weights (or, with --prior, the cold-start prior)"
        " from labelled pairs",
    )
    calibrate.add_argument("--data", help="qqp-style JSONL; default ../shared/data/qqp_dev.jsonl")
    calibrate.add_argument(
        "--prior",
        action="store_true",
        help="fit the prior (guard score to P(same answer)) instead of the guard's weights",
    )
    calibrate.add_argument(
        "--pairs",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help='with --prior: your own labelled pairs, JSONL {"a", "b", "same_answer"}'
        " (b is the query), fitted together with --data",
    )
    calibrate.add_argument("--out", help="write the JSON file here; default: print it")
    calibrate.add_argument(
        "--embedding-backend",
        choices=EMBEDDING_BACKENDS,
        help="default: torch for the guard's weights, onnx-int8 (the serving default) for --prior",
    )
    calibrate.set_defaults(run=_cmd_calibrate)


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0-65535")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `semcache` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"] and not _benchmarks_installed():
        print(f"semcache bench: {_BENCHMARKS_MISSING}", file=sys.stderr)
        return 1
    try:
        args = build_parser(with_benchmarks=arguments[:1] == ["bench"]).parse_args(arguments)
    except KeyboardInterrupt:  # Ctrl-C while the parser imports what a command needs
        print(f"{' '.join(['semcache', *arguments[:1]])}: interrupted", file=sys.stderr)
        return 130
    name = " ".join(word for word in (args.command, getattr(args, "bench", None)) if word)
    with _interrupts_noted() as interrupted:
        try:
            status = _run_command(args)
        except KeyboardInterrupt:  # Ctrl-C: what was started is stopped on the way out
            status = 130
            interrupted.set()
        except Exception:
            # An error the interrupt caused (the service a benchmark started, stopped by
            # the same Ctrl-C, refusing its next call): found in a full test run, a
            # traceback and status 1 where the user had pressed Ctrl-C.
            if not interrupted.is_set():
                raise
    if interrupted.is_set():
        print(f"semcache {name}: interrupted", file=sys.stderr)
        return 130
    return status


def _run_command(args: argparse.Namespace) -> int:
    """The command's status; a start-up problem is one line and status 1."""
    try:
        return int(args.run(args))
    except StartupError as error:  # e.g. an invalid SEMCACHE_* setting
        return _config_failed(args.command, error)
    except ValidationError as error:  # a tool (e.g. a benchmark) that built Settings() itself
        if error.title != Settings.__name__:
            raise
        return _config_failed(args.command, settings_error(error))
    except SettingsError as error:  # likewise, a JSON setting it could not parse
        return _config_failed(args.command, source_error(error))
    except ModuleNotFoundError as error:
        # Found from outside: in an image without the thin client, `semcache stats` was
        # a traceback. The client commands need it; the service does not.
        if error.name != "semcache_client":
            raise
        print(
            f"semcache {args.command}: this command needs the Python client, semcache-client:"
            " pip install ./clients/python (or `make install`)",
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[threading.Event]:
    """An event set when SIGINT arrives while the block runs (the signal's own handling
    is kept); in a thread other than the main one, never set."""
    noted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.getsignal(signal.SIGINT)

    def note(signum: int, frame: FrameType | None) -> None:
        noted.set()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_missing(error: ImportError, package: str) -> bool:
    """Whether `error` is `package` itself not being importable (not one of its imports)."""
    return (error.name or "").split(".")[0] == package


def _benchmarks_installed() -> bool:
    try:
        import benchmarks.commands  # noqa: F401
    except ImportError as error:
        if not _is_missing(error, "benchmarks"):
            raise
        return False
    return True


def _config_failed(command: str, error: StartupError) -> int:
    print(f"semcache {command}: {one_line(error)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
