"""Replay a labelled question stream through an in-process cache model, three deciders side by side.

Protocol (see ../shared/data/README_stream.md): requests in file order at concurrency 1
into an empty cache; the upstream answers each question with its cluster's tag, so a
served answer is right when its tag is the request's cluster. The cache model is the
service's, minus the network: an exact layer on `scope.exact_form(text)`, then the top
`SEARCH_LIMIT` entries by cosine (numpy over every stored vector), then a decider.
A miss (and an exploration) stores the question with its fresh answer; a hit stores
nothing. Deciders:

- `verdict`: `service.cache.verify` (guard rules as hard vetoes, calibrated prior,
  per-entry evidence from the `exact` judge, exploration and error budgets);
- `guard`: today's `NearMissGuard` at its shipped `accept_min`;
- `cosine`: a plain threshold; the best one at the verdict's error is reported.

Vectors come from the project's default embedder and are cached in a temp file
keyed by the model id and the texts, so a second run embeds nothing.

    python -m benchmarks.stream_replay run [--stream FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from benchmarks.data import data_file
from benchmarks.report import machine_note, markdown_table, write_results
from service.cache.guard import NearMissGuard
from service.cache.scope import CacheKey, exact_form
from service.cache.store import CacheEntry, ScoredEntry
from service.cache.verify.decision import Action
from service.cache.verify.evidence import Evidence, Observation
from service.cache.verify.prior import DEFAULT_PRIOR, Prior
from service.cache.verify.verifier import BudgetSettings, HitDecider, VerifyState

STREAM_FILE = "qqp_stream_dev.jsonl"
SEARCH_LIMIT = 5
COSINES = tuple(round(0.80 + 0.005 * i, 3) for i in range(40))
Matrix = npt.NDArray[np.float32]
Embed = Callable[[Sequence[str]], Matrix]


@dataclass(frozen=True)
class Request:
    """One line of the stream, with what scoring needs to know about it."""

    q: str
    cluster: str
    should_hit: bool  # its cluster was asked before
    reworded: bool  # should-hit, and this exact text was not asked before
    trap: bool


def load_stream(path: Path) -> list[Request]:
    """Read a `{"q", "cluster"}` stream and label each request.

    Raises:
        ValueError: a line lacks "q" or "cluster".
    """
    seen_clusters: set[str] = set()
    seen_texts: set[str] = set()
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        if "q" not in row or "cluster" not in row:
            raise ValueError(f"{path}:{number}: each line needs 'q' and 'cluster'")
        q, cluster, text = row["q"], row["cluster"], exact_form(row["q"])
        should = cluster in seen_clusters
        trap = cluster.startswith("t")
        requests.append(Request(q, cluster, should, should and text not in seen_texts, trap))
        seen_clusters.add(cluster)
        seen_texts.add(text)
    return requests


def cached_vectors(texts: Sequence[str], embed: Embed, model_id: str) -> dict[str, Matrix]:
    """Vectors of `texts`, from a temp-file cache keyed by model and texts when present."""
    unique = sorted(set(texts))
    digest = hashlib.sha256("\0".join([model_id, *unique]).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"semcache-stream-vectors-{digest}.npy"
    if path.is_file():
        matrix = np.load(path)
    else:
        matrix = np.asarray(embed(unique), dtype=np.float32)
        np.save(path, matrix)
    return {text: matrix[i] for i, text in enumerate(unique)}


@dataclass
class Entry:
    """One cached question, its answer and what was learned about it."""

    question: str
    answer: str
    evidence: Evidence = field(default_factory=Evidence)


class ReplayCache:
    """Exact layer plus brute-force cosine search over everything stored."""

    def __init__(self, dim: int) -> None:
        self.entries: list[Entry] = []
        self._exact: dict[str, int] = {}
        self._vectors = np.zeros((64, dim), dtype=np.float32)

    def exact(self, question: str) -> Entry | None:
        index = self._exact.get(exact_form(question))
        return None if index is None else self.entries[index]

    def nearest(self, vector: Matrix, limit: int) -> list[tuple[Entry, float]]:
        count = len(self.entries)
        if not count:
            return []
        similarities = self._vectors[:count] @ vector
        top = np.argsort(-similarities, kind="stable")[:limit]
        return [(self.entries[i], float(similarities[i])) for i in top]

    def add(self, question: str, answer: str, vector: Matrix) -> None:
        if len(self.entries) == len(self._vectors):
            self._vectors = np.vstack([self._vectors, np.zeros_like(self._vectors)])
        self._vectors[len(self.entries)] = vector
        self._exact.setdefault(exact_form(question), len(self.entries))
        self.entries.append(Entry(question, answer))


@dataclass(frozen=True)
class Choice:
    """A decider's answer for one request: what to do, and with which entry."""

    action: Action
    entry: Entry | None = None
    score: float = 0.0


class Decider(Protocol):
    """Chooses among the candidates of one request and learns from judged explorations."""

    name: str

    def choose(self, query: str, candidates: Sequence[tuple[Entry, float]]) -> Choice: ...

    def learn(self, request_index: int, choice: Choice, same: bool) -> None: ...


class CosineDecider:
    """Serve the most similar entry when its cosine reaches `threshold`."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.name = f"cosine {threshold:.3f}"

    def choose(self, query: str, candidates: Sequence[tuple[Entry, float]]) -> Choice:
        if candidates and candidates[0][1] >= self.threshold:
            return Choice(Action.SERVE, candidates[0][0], candidates[0][1])
        return Choice(Action.MISS)

    def learn(self, request_index: int, choice: Choice, same: bool) -> None:
        return None


class GuardDecider:
    """Today's decision: the near-miss guard, best accepted score served."""

    def __init__(self, guard: NearMissGuard) -> None:
        self.guard = guard
        self.name = f"guard (accept {guard.accept_min})"

    def choose(self, query: str, candidates: Sequence[tuple[Entry, float]]) -> Choice:
        best = Choice(Action.MISS)
        for entry, similarity in candidates:
            verdict = self.guard.verify(query, entry.question, similarity)
            if verdict.accept and (best.entry is None or verdict.score > best.score):
                best = Choice(Action.SERVE, entry, verdict.score)
        return best

    def learn(self, request_index: int, choice: Choice, same: bool) -> None:
        return None


class VerdictDecider:
    """The service's own decision (`verify.verifier.HitDecider`) with its budgets and
    live calibration, learning from each judged exploration as `Learning` does."""

    def __init__(
        self, delta: float, prior: Prior, explore_share: float, audit_share: float = 0.02
    ) -> None:
        self.state = VerifyState(prior)
        budget = BudgetSettings(delta, {}, explore_share, audit_share)
        self.decider = HitDecider(self.state, budget)
        self.guard = NearMissGuard(accept_min=0.0)
        self.name = f"verdict δ={delta:.1%}"
        self._ids: dict[int, str] = {}

    def note_exact(self) -> None:
        """An exact hit: a request the budgets share out over, at no risk."""
        self.decider.note_exact(_KEY)

    def choose(self, query: str, candidates: Sequence[tuple[Entry, float]]) -> Choice:
        found = [ScoredEntry(str(id(e)), s, _cache_entry(e)) for e, s in candidates]
        verdicts = [self.guard.verify(query, e.question, s) for e, s in candidates]
        choice = self.decider.choose(replace(_KEY, text=query), found, verdicts)
        by_id = {str(id(e)): e for e, _ in candidates}
        if choice.served is not None:
            return Choice(Action.SERVE, by_id[choice.served.point_id], choice.score)
        if choice.exploration is not None:
            explored = by_id[choice.exploration.point_id]
            return Choice(Action.EXPLORE, explored, choice.exploration.score)
        return Choice(Action.MISS)

    def learn(self, request_index: int, choice: Choice, same: bool) -> None:
        assert choice.entry is not None
        seen = Observation(float(request_index), f"r{request_index}", choice.score, same)
        choice.entry.evidence = choice.entry.evidence.add(seen)
        if choice.score < 1.0:  # as `Learning` does: the tenant's own live calibration
            self.state.calibrations.add(_KEY.tenant, choice.score, same)


_KEY = CacheKey("replay", "default", "replay", "", "", "")


def _cache_entry(entry: Entry) -> CacheEntry:
    return CacheEntry(
        tenant="replay", namespace="default", scope="replay", model="m",
        question=entry.question, content=entry.answer, finish_reason="stop",
        prompt_tokens=0, completion_tokens=0, cost_usd=0.0, created_at=0.0,
        expires_at=float("inf"), last_hit_at=0.0, evidence=entry.evidence,
    )  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What happened to one request."""

    request: Request
    kind: str  # "exact", "semantic", "explore" or "miss"
    correct: bool | None = None  # for exact and semantic hits
    decision_s: float | None = None  # the decider's time, when it had candidates


def _answer(cluster: str) -> str:
    return f"ANSWER[{cluster}]"


def _serve(request: Request, choice: Choice, cache: ReplayCache, vector: Matrix) -> Outcome:
    if choice.action is Action.SERVE and choice.entry is not None:
        return Outcome(request, "semantic", choice.entry.answer == _answer(request.cluster))
    cache.add(request.q, _answer(request.cluster), vector)
    return Outcome(request, "explore" if choice.action is Action.EXPLORE else "miss")


def replay(
    requests: Sequence[Request], vectors: dict[str, Matrix], decider: Decider
) -> list[Outcome]:
    """Run the stream through an empty cache with `decider`; one outcome per request."""
    cache = ReplayCache(len(next(iter(vectors.values()))))
    outcomes = []
    for index, request in enumerate(requests):
        exact = cache.exact(request.q)
        if exact is not None:
            if isinstance(decider, VerdictDecider):
                decider.note_exact()
            outcomes.append(Outcome(request, "exact", exact.answer == _answer(request.cluster)))
            continue
        vector = vectors[request.q]
        candidates = cache.nearest(vector, SEARCH_LIMIT)
        started = time.perf_counter()
        choice = decider.choose(request.q, candidates)
        took = time.perf_counter() - started if candidates else None
        if choice.action is Action.EXPLORE and choice.entry is not None:
            decider.learn(index, choice, choice.entry.answer == _answer(request.cluster))
        outcomes.append(replace(_serve(request, choice, cache, vector), decision_s=took))
    return outcomes


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def summarise(name: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The issue's figures for one decider over `outcomes`."""
    hits = [o for o in outcomes if o.kind in ("exact", "semantic")]
    right = [o for o in hits if o.correct]
    should = [o for o in outcomes if o.request.should_hit]
    reworded = [o for o in outcomes if o.request.reworded]
    return {
        "decider": name,
        "requests": len(outcomes),
        "served": _share(sum(o.request.should_hit for o in right), len(should)),
        "reworded_served": _share(sum(o.request.reworded for o in right), len(reworded)),
        "error_rate": _share(len(hits) - len(right), len(outcomes)),
        "wrong": len(hits) - len(right),
        "exact_hits": sum(o.kind == "exact" for o in outcomes),
        "semantic_hits": sum(o.kind == "semantic" for o in outcomes),
        "traps_served": sum(o.request.trap for o in hits),
        "explorations": sum(o.kind == "explore" for o in outcomes),
        "exploration_share": _share(sum(o.kind == "explore" for o in outcomes), len(outcomes)),
    }


def best_cosine(
    requests: Sequence[Request], vectors: dict[str, Matrix], max_error_rate: float
) -> tuple[float, list[Outcome]]:
    """The plain threshold serving most should-hit requests at an error rate <= the given."""
    best: tuple[float, float, list[Outcome]] | None = None
    for threshold in COSINES:
        outcomes = replay(requests, vectors, CosineDecider(threshold))
        figures = summarise("", outcomes)
        if figures["error_rate"] <= max_error_rate and (
            best is None or figures["served"] > best[0]
        ):
            best = (figures["served"], threshold, outcomes)
    if best is None:
        threshold = COSINES[-1]
        return threshold, replay(requests, vectors, CosineDecider(threshold))
    return best[1], best[2]


COLUMNS = [
    ("decider", "decider"),
    ("part", "part"),
    ("served", "served (of should-hit)"),
    ("reworded_served", "reworded served"),
    ("error_rate", "error rate"),
    ("wrong", "wrong"),
    ("exact_hits", "exact hits"),
    ("semantic_hits", "semantic hits"),
    ("traps_served", "traps served"),
    ("explorations", "explorations"),
    ("exploration_share", "exploration share"),
]


TIMING_COLUMNS = [
    ("decider", "decider"),
    ("decisions", "decisions timed"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
]


def timing_rows(results: dict[str, list[Outcome]]) -> list[dict[str, Any]]:
    """Per decider, the time of one decision over the top-5 candidates (guard included)."""
    rows = []
    for name, outcomes in results.items():
        times = [o.decision_s for o in outcomes if o.decision_s is not None]
        if not times:
            continue
        p50, p99 = np.percentile(np.array(times) * 1000.0, [50, 99])
        rows.append(
            {"decider": name, "decisions": len(times), "p50_ms": round(float(p50), 3),
             "p99_ms": round(float(p99), 3)}
        )  # fmt: skip
    return rows


def table_rows(results: dict[str, list[Outcome]]) -> list[dict[str, Any]]:
    """Whole-stream and second-half figures for every decider."""
    rows = []
    for name, outcomes in results.items():
        half = len(outcomes) // 2
        rows.append({**summarise(name, outcomes), "part": "all"})
        rows.append({**summarise(name, outcomes[half:]), "part": "2nd half"})
    return rows


def learning_curve(outcomes: Sequence[Outcome], block: int) -> tuple[list[float], list[float]]:
    """Served share (of should-hit) and error rate per block of `block` requests."""
    served, errors = [], []
    for start in range(0, len(outcomes), block):
        figures = summarise("", outcomes[start : start + block])
        served.append(figures["served"])
        errors.append(figures["error_rate"])
    return served, errors


def plot(
    results: dict[str, list[Outcome]],
    path: Path,
    block: int = 300,
    title: str = "qqp_stream_dev replay: learning curve",
) -> None:
    """A two-panel PNG: served share and error rate per block of the stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name, outcomes in results.items():
        served, errors = learning_curve(outcomes, block)
        x = [block * (i + 1) for i in range(len(served))]
        top.plot(x, served, marker="o", label=name)
        bottom.plot(x, [100 * e for e in errors], marker="o", label=name)
    top.set_ylabel(f"served / should-hit, per {block} requests")
    bottom.set_ylabel("wrong answers, % of requests")
    bottom.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    bottom.set_xlabel("requests replayed")
    top.legend(fontsize=8)
    top.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def default_embed() -> tuple[Embed, str]:
    """The project's default embedder (onnx-int8, one thread, .semcache/models)."""
    from service.embedding.factory import build_embedder

    embedder = build_embedder("onnx-int8", None, Path(".semcache/models"), 1)
    return embedder.embed, embedder.model_id


def run_all(
    requests: Sequence[Request], vectors: dict[str, Matrix], deltas: Iterable[float],
    explore_share: float = 0.1,
) -> tuple[dict[str, list[Outcome]], float]:  # fmt: skip
    """Every decider over the stream; returns outcomes by name and the cosine chosen."""
    results: dict[str, list[Outcome]] = {}
    for delta in deltas:
        decider = VerdictDecider(delta, DEFAULT_PRIOR, explore_share)
        results[decider.name] = replay(requests, vectors, decider)
    guard = GuardDecider(NearMissGuard())
    results[guard.name] = replay(requests, vectors, guard)
    first = summarise("", next(iter(results.values())))
    threshold, outcomes = best_cosine(requests, vectors, first["error_rate"])
    results[f"cosine {threshold:.3f} (best at ≤ verdict's error)"] = outcomes
    return results, threshold


def _cmd_run(args: argparse.Namespace) -> int:
    requests = load_stream(data_file(args.stream, STREAM_FILE, "--stream"))
    embed, model_id = default_embed()
    vectors = cached_vectors([r.q for r in requests], embed, model_id)
    results, _ = run_all(requests, vectors, args.deltas, args.explore_share)
    table = markdown_table(table_rows(results), COLUMNS)
    timing = markdown_table(timing_rows(results), TIMING_COLUMNS)
    table += (
        "\n\nTime of one decision over the candidates (the guard's verdicts included), in"
        " this process, one request at a time:\n\n" + timing
    )
    print(table)
    report = {
        "command": "python -m benchmarks.stream_replay " + shlex.join(sys.argv[1:]),
        "machine": machine_note(),
        "rows": table_rows(results),
        "timing": timing_rows(results),
    }
    # Checked in (docs/bench/stream-replay), with the command and the code it ran: the
    # README's figures from this command once came from an ignored folder.
    write_results(args.out, "stream_replay", report, f"{report['machine']}.\n\n{table}")
    plot(results, args.out / "stream_replay.png")
    print(f"\nwrote {args.out}/stream_replay.json, .md and .png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_replay")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="replay the stream with every decider")
    run.add_argument(
        "--stream", type=Path, help=f"default: {STREAM_FILE} in SEMCACHE_BENCH_DATA_DIR"
    )
    run.add_argument("--out", type=Path, default=Path("docs/bench/stream-replay"))
    run.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.02])
    run.add_argument("--explore-share", type=float, default=0.1)
    run.set_defaults(handler=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
