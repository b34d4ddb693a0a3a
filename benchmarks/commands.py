"""The `semcache bench` commands: load, overhead, compare, gptcache, grouping, scale, peers,
startup, upstream, indexing, stream, targets, ab and readme.

`add_bench_commands(benches)` adds them to the `bench` subparsers of
`service.cli.build_parser`; until that one line is wired in, the same
commands run as `python -m benchmarks.commands load|overhead|...`.
Service processes started by a benchmark get `SEMCACHE_EMBEDDING_BACKEND`
from `--embedding-backend` (default onnx-int8); in-process benchmarks build
the same embedder from the usual settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.embedding.factory import EMBEDDING_BACKENDS

BACKENDS = list(EMBEDDING_BACKENDS)


def _service_env(args: argparse.Namespace) -> dict[str, str]:
    return {"SEMCACHE_EMBEDDING_BACKEND": args.embedding_backend}


def error_budget_env(args: argparse.Namespace) -> dict[str, str]:
    """SEMCACHE_ERROR_BUDGET as `error_budget_argument`'s `--error-budget` asks."""
    return {"SEMCACHE_ERROR_BUDGET": "true" if args.error_budget == "on" else "false"}


def _embedder(args: argparse.Namespace) -> Any:
    from service.config import Settings
    from service.embedding.factory import build_embedder
    from service.logs import configure_logging

    configure_logging("console", "warning")
    settings = Settings()
    return build_embedder(
        args.embedding_backend,
        settings.embedding_model_path,
        settings.embedding_cache_dir,
        settings.embedding_threads,
    )


def _cmd_load(args: argparse.Namespace) -> int:
    from benchmarks.load import LoadConfig, run

    config = LoadConfig(
        pairs=args.pairs,
        requests=args.requests,
        hit_requests=args.hit_requests,
        concurrency=tuple(args.concurrency),
        modes=tuple(args.modes),
        zipf_s=args.zipf_s,
        paraphrase_p=args.paraphrase_p,
        seed=args.seed,
    )
    env = {
        **_service_env(args),
        "SEMCACHE_EMBEDDING_MEMO_SIZE": str(args.embedding_memo_size),
        **error_budget_env(args),
    }
    print(run(Path(args.out), config, args.target, args.service_pid, env, _data(args)))
    return 0


def _cmd_overhead(args: argparse.Namespace) -> int:
    from benchmarks.overhead import run

    print(run(Path(args.out), args.requests, _service_env(args), _data(args)))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import run

    print(run(Path(args.out), _embedder(args), args.sizes, args.queries, args.warmup, _data(args)))
    return 0


def _cmd_gptcache(args: argparse.Namespace) -> int:
    from benchmarks.gptcache_bench import run

    embedder = _embedder(args)
    env = {**_service_env(args), **error_budget_env(args)}
    print(run(Path(args.out), embedder, args.pairs, args.requests, env, _data(args)))
    return 0


def _cmd_grouping(args: argparse.Namespace) -> int:
    from benchmarks.grouping import run

    table = run(
        Path(args.out),
        args.requests,
        args.concurrency,
        args.ttft_ms,
        args.ms_per_token,
        args.max_prompts,
        args.max_in_flight,
        _service_env(args),
        _data(args),
    )
    print(table)
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    from benchmarks.scale import run

    sizes = [*args.sizes, *([1_000_000] if args.with_1m else [])]
    print(
        run(Path(args.out), _embedder(args), sizes, args.variants, args.time_limit_s, _data(args))
    )
    return 0


def _cmd_peers(args: argparse.Namespace) -> int:
    from benchmarks.peers import PeersConfig, run

    config = PeersConfig(
        peer=args.peer,
        requests=args.requests,
        hit_set=args.hit_set,
        hit_requests=args.hit_requests,
        concurrency=args.concurrency,
        rounds=args.rounds,
        warmup=args.warmup,
    )
    print(run(Path(args.out), config, _service_env(args), _data(args)))
    return 0


def _cmd_startup(args: argparse.Namespace) -> int:
    from benchmarks.startup import run

    print(run(Path(args.out), args.runs, args.embedding_backend))
    return 0


def _cmd_upstream(args: argparse.Namespace) -> int:
    from benchmarks.upstream_client import run

    print(run(Path(args.out), args.calls, args.warmup, _data(args)))
    return 0


def _cmd_indexing(args: argparse.Namespace) -> int:
    from benchmarks.indexing import run

    print(run(Path(args.out), args.points, args.step))
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from benchmarks.data import data_file
    from benchmarks.stream import run

    stream = data_file(
        Path(args.stream) if args.stream else None, "qqp_stream_dev.jsonl", "--stream"
    )
    table = run(
        Path(args.out), stream, args.max_error_rate, args.limit, _embedder(args), _service_env(args)
    )
    print(table)
    return 0


def _data(args: argparse.Namespace) -> Path | None:
    return Path(args.data) if args.data else None


def error_budget_argument(parser: argparse.ArgumentParser, why: str) -> None:
    """`--error-budget on|off` for a benchmark that times the hit path of the service it
    starts; off by default, for the reason `why` gives (the hit path is then timed with
    the guard's own accept)."""
    parser.add_argument(
        "--error-budget",
        choices=["on", "off"],
        default="off",
        help=f"SEMCACHE_ERROR_BUDGET for the service it starts; off (the default here): {why},"
        " so the hit path is timed with the guard's own accept",
    )


def data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data FILE`: the qqp-style JSONL a benchmark reads (default from the settings)."""
    parser.add_argument(
        "--data",
        help="qqp-style JSONL; default: qqp_dev.jsonl in SEMCACHE_BENCH_DATA_DIR, else in"
        " shared/data beside the repository's folder",
    )


def _cmd_targets(args: argparse.Namespace) -> int:
    from benchmarks.targets import SUITE, BenchFailedError, bench_args, run

    if args.runs < 1:
        print(f"--runs must be at least 1, not {args.runs}", file=sys.stderr)
        return 2
    names = [name for name in SUITE if name != "peers" or args.with_peers]
    extra: dict[str, str] = {}
    for item in args.args:
        name, sep, words = item.partition("=")
        if not sep:
            print(f"--args takes NAME=ARGS (as in \"load=--requests 500\"), not {item!r}",
                  file=sys.stderr)  # fmt: skip
            return 2
        extra[name] = f"{extra.get(name, '')} {words}"
    common = [*(["--data", args.data] if args.data else [])]
    common += ["--embedding-backend", args.embedding_backend] if args.embedding_backend else []
    try:
        print(run(Path(args.out), args.runs, bench_args(names, extra, common)))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    except BenchFailedError as error:
        print(f"semcache bench targets: {error}", file=sys.stderr)
        return 1
    return 0


def _add_targets_command(benches: Any) -> None:
    targets = benches.add_parser(
        "targets", help="issue 13's targets: latency, overhead, load (and peers) run N times"
    )
    targets.add_argument("--runs", type=int, default=3, help="rounds of every benchmark")
    targets.add_argument(
        "--with-peers", action="store_true", help="run `bench peers` too (LiteLLM's venv)"
    )
    targets.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='more arguments for one benchmark, as in "load=--requests 500" (repeatable)',
    )
    targets.add_argument("--out", default="bench-results/targets", help="folder for the results")
    data_argument(targets)
    targets.add_argument("--embedding-backend", choices=BACKENDS, help="passed to every benchmark")
    targets.set_defaults(run=_cmd_targets)


def _cmd_readme(args: argparse.Namespace) -> int:
    from benchmarks.readme_tables import run

    return run(args.check)


def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--out", default=out, help="folder for JSON, Markdown and PNG results")
    data_argument(parser)
    parser.add_argument(
        "--embedding-backend",
        choices=BACKENDS,
        default="onnx-int8",
        help="embedding backend of the service (and of in-process caches)",
    )


def add_bench_commands(benches: Any) -> None:
    """Add load, overhead, compare, gptcache, grouping, scale, peers, startup, indexing, stream,
    readme."""
    load = benches.add_parser("load", help="Zipf workload and hit phases through gRPC, swept")
    load.add_argument("--pairs", type=int, default=2000, help="distinct duplicate pairs")
    load.add_argument("--requests", type=int, default=1000, help="requests per Zipf phase")
    load.add_argument("--hit-requests", type=int, default=1000, help="requests per hit phase")
    load.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    load.add_argument(
        "--modes", nargs="+", choices=["unary", "stream"], default=["unary", "stream"]
    )
    load.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent over pairs")
    load.add_argument("--paraphrase-p", type=float, default=0.3, help="chance of asking `b`")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--target", help="measure this running service instead of starting one")
    load.add_argument("--service-pid", type=int, help="pid of --target's process, for CPU/RSS")
    load.add_argument(
        "--embedding-memo-size",
        type=int,
        default=0,
        help="SEMCACHE_EMBEDDING_MEMO_SIZE for the service it starts; 0 (the default here)"
        " embeds every ask, as phases replay the same texts and would find them in the memo",
    )
    error_budget_argument(
        load,
        "the hit phases replay the same paraphrases, and under the budget the share served"
        " moves with its allowance",
    )
    _common(load, "bench-results/load")
    load.set_defaults(run=_cmd_load)

    overhead = benches.add_parser("overhead", help="miss latency: simulator direct vs via semcache")
    overhead.add_argument("--requests", type=int, default=300, help="distinct questions")
    _common(overhead, "bench-results/overhead")
    overhead.set_defaults(run=_cmd_overhead)

    compare = benches.add_parser("compare", help="lookup vs the article's reference cache")
    compare.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    compare.add_argument("--queries", type=int, default=200, help="measured queries per size")
    compare.add_argument(
        "--warmup", type=int, default=20, help="unmeasured queries first, for every lookup alike"
    )
    _common(compare, "bench-results/compare")
    compare.set_defaults(run=_cmd_compare)

    gptcache = benches.add_parser("gptcache", help="semantic-hit throughput vs GPTCache")
    gptcache.add_argument("--pairs", type=int, default=500, help="duplicate pairs cached")
    gptcache.add_argument("--requests", type=int, default=1000, help="hits asked per phase")
    error_budget_argument(
        gptcache,
        "GPTCache serves whatever passes its threshold, and under the budget a fresh semcache"
        " explores most first paraphrases instead",
    )
    _common(gptcache, "bench-results/gptcache")
    gptcache.set_defaults(run=_cmd_gptcache)

    grouping = benches.add_parser(
        "grouping", help="misses at high concurrency: one call each vs grouped /v1/completions"
    )
    grouping.add_argument("--requests", type=int, default=512, help="distinct misses")
    grouping.add_argument("--concurrency", type=int, default=64)
    grouping.add_argument("--ttft-ms", type=float, default=50.0, help="simulator latency")
    grouping.add_argument("--ms-per-token", type=float, default=2.0, help="simulator latency")
    grouping.add_argument("--max-prompts", type=int, default=16, help="group_prompts setting")
    grouping.add_argument("--max-in-flight", type=int, default=4, help="group_prompts setting")
    _common(grouping, "bench-results/grouping")
    grouping.set_defaults(run=_cmd_grouping)

    scale = benches.add_parser("scale", help="store lookup latency and memory at 10k-1M entries")
    scale.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    scale.add_argument("--with-1m", action="store_true", help="add 1,000,000 entries (slow)")
    scale.add_argument(
        "--variants", nargs="+", choices=["ram", "int8-disk"], default=["ram", "int8-disk"]
    )
    scale.add_argument("--time-limit-s", type=float, default=600.0, help="per build or probe")
    _common(scale, "bench-results/scale")
    scale.set_defaults(run=_cmd_scale)

    peers = benches.add_parser(
        "peers", help="semcache beside the LiteLLM proxy, same upstream, interleaved"
    )
    peers.add_argument(
        "--peer",
        choices=["litellm", "semcache"],
        default="litellm",
        help="litellm (installed on first use into .semcache/peers-venv), or a second"
        " semcache standing in for it (tests the harness without LiteLLM)",
    )
    peers.add_argument("--requests", type=int, default=300, help="calls per gateway per phase")
    peers.add_argument("--hit-set", type=int, default=100, help="distinct exact hits (≤ 100)")
    peers.add_argument("--hit-requests", type=int, default=1024, help="hits per gateway at c=N")
    peers.add_argument("--concurrency", type=int, default=64, help="N for the hits/s phase")
    peers.add_argument("--rounds", type=int, default=4, help="alternating blocks at c=N")
    peers.add_argument("--warmup", type=int, default=20, help="unmeasured calls per gateway")
    _common(peers, "bench-results/peers")
    peers.set_defaults(run=_cmd_peers)

    startup = benches.add_parser(
        "startup", help="spawn to first SERVING health check, vs a bare gRPC server's"
    )
    startup.add_argument("--runs", type=int, default=10, help="starts of each configuration")
    startup.add_argument("--out", default="bench-results/startup", help="folder for the results")
    startup.add_argument("--embedding-backend", choices=BACKENDS, default="onnx-int8")
    startup.set_defaults(run=_cmd_startup)

    upstream = benches.add_parser(
        "upstream", help="one provider call: thin aiohttp vs the openai SDK vs semcache's provider"
    )
    upstream.add_argument("--calls", type=int, default=1000, help="measured calls per client")
    upstream.add_argument(
        "--warmup", type=int, default=50, help="unmeasured calls first, for every client alike"
    )
    data_argument(upstream)
    upstream.add_argument("--out", default="bench-results/upstream", help="folder for the results")
    upstream.set_defaults(run=_cmd_upstream)

    indexing = benches.add_parser(
        "indexing", help="how long the embedded store's index rebuilds stop the service"
    )
    indexing.add_argument("--points", type=int, default=40_000, help="points each store grows to")
    indexing.add_argument(
        "--step", type=int, default=2_000, help="points per step (SEMCACHE_INDEX_AFTER_POINTS)"
    )
    indexing.add_argument("--out", default="bench-results/indexing", help="folder for the results")
    indexing.set_defaults(run=_cmd_indexing)

    stream = benches.add_parser(
        "stream", help="a labelled question stream through the service: verified vs guard vs cosine"
    )
    stream.add_argument("--stream", help="{q, cluster} JSONL; default: qqp_stream_dev.jsonl")
    stream.add_argument("--max-error-rate", type=float, default=0.01, help="the verified run's δ")
    stream.add_argument("--limit", type=int, help="replay only the first N requests")
    stream.add_argument("--out", default="bench-results/stream", help="folder for the results")
    stream.add_argument("--embedding-backend", choices=BACKENDS, default="onnx-int8")
    stream.set_defaults(run=_cmd_stream)

    readme = benches.add_parser(
        "readme", help="rewrite README.md's benchmark tables from the results in docs/bench"
    )
    readme.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    readme.set_defaults(run=_cmd_readme)
    _add_targets_command(benches)
    _add_ab_command(benches)


def _add_ab_command(benches: Any) -> None:
    ab = benches.add_parser(
        "ab", help="two services side by side: the defaults against some settings changed"
    )
    ab.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SEMCACHE_ setting for side B (repeatable); side A keeps the default",
    )
    ab.add_argument("--pairs", type=int, default=200, help="duplicate pairs to ask each side")
    ab.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh pairs of services the pairs are dealt over; the side started first"
        " alternates round by round",
    )
    error_budget_argument(
        ab,
        "under the budget a fresh cache explores most first paraphrases, and few semantic hits"
        " would be timed",
    )
    _common(ab, "bench-results/ab")
    ab.set_defaults(run=_cmd_ab)


def _cmd_ab(args: argparse.Namespace) -> int:
    from benchmarks.ab import SettingError, parse_settings, run

    try:
        settings_b = parse_settings(args.setting)
    except SettingError as error:
        print(error, file=sys.stderr)
        return 2
    if not 1 <= args.rounds <= args.pairs:
        print(
            f"--rounds must be between 1 and --pairs ({args.pairs}), not {args.rounds}",
            file=sys.stderr,
        )
        return 2
    env = {**_service_env(args), **error_budget_env(args)}
    print(run(Path(args.out), settings_b, args.pairs, _data(args), env, args.rounds))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.commands NAME ...`: the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commands")
    add_bench_commands(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
