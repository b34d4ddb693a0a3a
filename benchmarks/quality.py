"""Quality benchmark: how often the cache serves the right answer, and the wrong one.

It goes through the service's own lookup path (`SemanticCache.lookup` over a
real Qdrant Edge store, the configured embedder and verifier), not a
re-implementation. Protocol, per data set: every pair's `a` is stored in one
cache; every `b` is asked. A hit on the pair's own `a` is served (correct if
the pair deserves the same answer, wrong if not); a hit on any other entry is
wrong. Questions identical to another pair's `a` are counted as wrong too
(the strict protocol) and also reported apart, since serving an identical
question's answer is right.

Three ways of deciding a hit are swept side by side: a plain cosine threshold,
the near-miss guard's own accept (the decision before the error budget), and
the service's default decision, the error budget at several deltas (`budget`:
the guard built from the service's settings, its verdicts decided by
`HitDecider` with `BudgetSettings(delta)`, as `service.app` builds it). The
budget runs with no exploration and no audits: an explored request would be
answered upstream, i.e. not served, and a pairs benchmark has no upstream to
learn from. Its `ErrorBudget` spends delta over the requests in the order they
are asked (pairs in file order); every request here has a candidate.

Data is read where it lies: qqp_dev.jsonl (`benchmarks.data`, or `--data`) and
the fow-cache package. `--limit N` keeps the first N pairs of each data set (a
quick look). A progress line goes to stderr per data set and verifier setting.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.data import data_file
from benchmarks.report import code_version, command_line, machine_note, progress
from service.cache.edge_store import EdgeVectorStore
from service.cache.guard import NearMissGuard
from service.cache.scope import exact_form
from service.cache.semantic import Answer, SemanticCache, ThresholdVerifier, Verifier
from service.cache.verify.prior import load_prior
from service.cache.verify.verifier import BudgetSettings, HitDecider, VerifyState
from service.config import Settings
from service.domain import ChatMessage, CompletionRequest
from service.embedding.base import Embedder, Vectors
from service.embedding.batcher import EmbeddingBatcher

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
GUARD_ACCEPT = (0.60, 0.70, 0.75, 0.79, 0.83, 0.87, 0.90, 0.93, 0.96)
DELTAS = (0.005, 0.01, 0.02)


@dataclass(frozen=True)
class Pair:
    """One labelled pair: `a` is cached, `b` is asked. Each side is a conversation."""

    id: str
    group: str
    a: tuple[ChatMessage, ...]
    b: tuple[ChatMessage, ...]
    same_answer: bool


def _messages(side: str | list[dict[str, str]]) -> tuple[ChatMessage, ...]:
    if isinstance(side, str):
        return (ChatMessage("user", side),)
    return tuple(ChatMessage(m["role"], m["content"]) for m in side)


def load_qqp(path: Path | None = None) -> list[Pair]:
    """The qqp-style pairs at `path` (default: qqp_dev.jsonl in the benchmark data folder).

    Raises:
        MissingDataError: the file is not there.
    """
    with data_file(path).open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    return [
        Pair(
            f"qqp-{i}",
            "duplicate" if r["same_answer"] else "non_duplicate",
            _messages(r["a"]),
            _messages(r["b"]),
            r["same_answer"],
        )
        for i, r in enumerate(rows)
    ]


def load_fow_pairs() -> list[Pair]:
    from fow_cache.data import load_questions

    return [
        Pair(r["id"], r["category"], _messages(r["a"]), _messages(r["b"]), r["same_answer"])
        for r in load_questions()
    ]


def load_fow_conversations() -> list[Pair]:
    from fow_cache.data import load_conversations

    return [
        Pair(r["id"], r["subtype"], _messages(r["a"]), _messages(r["b"]), r["same_answer"])
        for r in load_conversations()
    ]


DATASETS = {"qqp": load_qqp, "fow-pairs": load_fow_pairs, "fow-conv": load_fow_conversations}


class MemoEmbedder:
    """Wraps an embedder so each distinct text is embedded once across the whole sweep."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._memo: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = {}

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dim(self) -> int:
        return self._inner.dim

    def warm(self, texts: Iterable[str], batch: int = 64) -> None:
        """Embed every text not seen yet, in batches; a progress line every 1,024 texts."""
        todo = sorted({t for t in texts if t not in self._memo})
        for start in range(0, len(todo), batch):
            if start and start % 1024 == 0:
                progress(f"embedded {start}/{len(todo)} texts")
            chunk = todo[start : start + batch]
            for text, vector in zip(chunk, self._inner.embed(chunk), strict=True):
                self._memo[text] = vector

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.warm(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts]).astype(np.float32)


def _fingerprint(messages: tuple[ChatMessage, ...]) -> str:
    return json.dumps([[m.role, exact_form(m.content)] for m in messages])


def _request(messages: tuple[ChatMessage, ...]) -> CompletionRequest:
    return CompletionRequest(messages=messages, tenant="bench", namespace="quality")


@dataclass
class Tally:
    """Outcomes of one verifier setting on one data set, per group.

    `decisions` holds, per asked question in order, what was served: the hit
    entry's fingerprint, or "" for a miss (to compare two embedders' decisions).
    """

    decisions: list[str] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wrong: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    identical_other: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    explored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def _populate(cache: SemanticCache, pairs: Sequence[Pair]) -> None:
    for pair in pairs:
        request = _request(pair.a)
        lookup = await cache.lookup(request)
        answer = Answer(_fingerprint(pair.a), "bench", "stop", 0, 0, 0.0)
        await cache.store_answer(lookup, answer)


async def _score(cache: SemanticCache, pairs: Sequence[Pair]) -> Tally:
    tally = Tally()
    for pair in pairs:
        tally.total[pair.group] += 1
        lookup = await cache.lookup(_request(pair.b))
        tally.decisions.append(lookup.hit.entry.content if lookup.hit else "")
        if lookup.hit is None:
            tally.explored[pair.group] += lookup.exploration is not None
            continue
        own = lookup.hit.entry.content == _fingerprint(pair.a)
        if own and pair.same_answer:
            tally.served[pair.group] += 1
            continue
        tally.wrong[pair.group] += 1
        if not own and lookup.hit.entry.content == _fingerprint(pair.b):
            tally.identical_other[pair.group] += 1
    return tally


class Setting(NamedTuple):
    """One way of deciding a hit: `mode` at `value` (threshold, guard accept or delta).

    `budget` set: the hit is decided against that error budget (a fresh `HitDecider`
    per data set); None: by the verifier's own accept.
    """

    mode: str
    value: float
    verifier: Verifier
    budget: BudgetSettings | None = None


DEFAULT_SETTINGS: tuple[tuple[str, float], ...] = (("guard", 0.79), ("threshold", 0.95))


def budget_setting(delta: float, service: Settings | None = None) -> Setting:
    """The service's default decision at `delta`, built as `service.app` builds it.

    The guard takes the settings' floor, accept and context thresholds (`service`,
    default: the service's defaults); exploration and audits are off (see the module
    docstring).
    """
    from service.app import build_verifier

    service = service or Settings()
    budget = BudgetSettings(delta, {}, exploration_share=0.0, audit_share=0.0)
    return Setting("budget", delta, build_verifier(service), budget)


def _settings(service: Settings | None = None) -> list[Setting]:
    plain = [Setting("threshold", t, ThresholdVerifier(t)) for t in THRESHOLDS]
    guarded = [Setting("guard", a, NearMissGuard(0.75, a)) for a in GUARD_ACCEPT]
    budgeted = [budget_setting(delta, service) for delta in DELTAS]
    return plain + guarded + budgeted


Decisions = dict[tuple[str, str, float], list[str]]


Loader = Callable[[], list[Pair]]


def loaders(data: Path | None = None, limit: int | None = None) -> dict[str, Loader]:
    """Each data set's loader, qqp from `data`, each cut to its first `limit` pairs."""

    def cut(load: Loader) -> Loader:
        return lambda: load()[:limit] if limit is not None else load()

    chosen: dict[str, Loader] = {**DATASETS, "qqp": functools.partial(load_qqp, data)}
    return {name: cut(load) for name, load in chosen.items()}


async def run_dataset(
    name: str,
    embedder: MemoEmbedder,
    workdir: Path,
    settings: Sequence[Setting],
    decisions: Decisions,
    load: Loader | None = None,
) -> list[dict[str, Any]]:
    """Each verifier setting on one data set; one row per (setting, group)."""
    pairs = (load or DATASETS[name])()
    progress(f"quality {name}: embedding {len(pairs)} pairs")
    embedder.warm(m.content for p in pairs for m in (*p.a, *p.b))
    store = EdgeVectorStore(workdir / name, embedder.dim)
    batcher = EmbeddingBatcher(embedder)
    rows: list[dict[str, Any]] = []
    try:
        await _with_cache(
            store, batcher, Setting("store", 1.01, ThresholdVerifier(1.01)), _populate, pairs
        )
        for done, setting in enumerate(settings, start=1):
            mode, value = setting.mode, setting.value
            progress(f"quality {name}: setting {done}/{len(settings)} ({mode} {value:g})")
            tally = await _with_cache(store, batcher, setting, _score, pairs)
            rows += _rows(name, mode, value, pairs, tally)
            decisions[(name, mode, value)] = tally.decisions
    finally:
        await batcher.close()
        await store.close()
    return rows


async def _with_cache(
    store: EdgeVectorStore,
    batcher: EmbeddingBatcher,
    setting: Setting,
    work: Callable[[SemanticCache, Sequence[Pair]], Any],
    pairs: Sequence[Pair],
) -> Any:
    """`work(cache, pairs)` on a cache over `store`, closed after (its background tasks too).

    A budget setting gets a fresh decision (its own prior state and error budget).
    """
    decider = None
    if setting.budget is not None:
        decider = HitDecider(VerifyState(load_prior(None)), setting.budget)
    cache = SemanticCache(store, batcher, setting.verifier, search_limit=5, decider=decider)
    try:
        return await work(cache, pairs)
    finally:
        await cache.close()


def _rows(
    name: str, mode: str, value: float, pairs: Sequence[Pair], tally: Tally
) -> list[dict[str, Any]]:
    should_hit = {p.group for p in pairs if p.same_answer}
    rows = []
    for group in sorted(tally.total):
        total = tally.total[group]
        rows.append(
            {
                "dataset": name,
                "mode": mode,
                "value": value,
                "group": group,
                "should_hit": group in should_hit,
                "pairs": total,
                "served_pct": round(100 * tally.served[group] / total, 2),
                "wrong_pct": round(100 * tally.wrong[group] / total, 2),
                "wrong_identical_question": tally.identical_other[group],
                "explored_pct": round(100 * tally.explored[group] / total, 2),
                "wrong_excl_identical_pct": round(
                    100 * (tally.wrong[group] - tally.identical_other[group]) / total, 2
                ),
            }
        )
    return rows


def overall(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, mode, value): should-hit served % and trap wrong %, pair-weighted."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["mode"], row["value"])].append(row)
    summary = []
    for (dataset, mode, value), members in groups.items():
        hit = [m for m in members if m["should_hit"]]
        trap = [m for m in members if not m["should_hit"]]
        summary.append(
            {
                "dataset": dataset,
                "mode": mode,
                "value": value,
                "should_hit_served_pct": _weighted(hit, "served_pct"),
                "should_hit_wrong_pct": _weighted(hit, "wrong_pct"),
                "trap_wrong_pct": _weighted(trap, "wrong_pct"),
                "worst_trap_group_pct": max((m["wrong_pct"] for m in trap), default=0.0),
                "trap_wrong_identical_question": sum(m["wrong_identical_question"] for m in trap),
                "trap_wrong_excl_identical_pct": _weighted(trap, "wrong_excl_identical_pct"),
                "worst_trap_group_excl_identical_pct": max(
                    (m["wrong_excl_identical_pct"] for m in trap), default=0.0
                ),
                "explored_pct": _weighted(members, "explored_pct"),
            }
        )
    return summary


def _weighted(members: Sequence[dict[str, Any]], key: str) -> float:
    total = sum(m["pairs"] for m in members)
    if not total:
        return 0.0
    weighted: float = sum(m[key] * m["pairs"] for m in members)
    return float(round(weighted / total, 2))


def markdown(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| data set | verifier | setting | should-hit served % | traps wrong % (strict) |"
        " identical-question hits | traps wrong % (excl. identical) |"
        " worst trap group % (excl. identical) | explored % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {s['mode']} | {setting_label(s['mode'], s['value'])} |"
            f" {s['should_hit_served_pct']} | {s['trap_wrong_pct']} |"
            f" {s['trap_wrong_identical_question']} | {s['trap_wrong_excl_identical_pct']} |"
            f" {s['worst_trap_group_excl_identical_pct']} | {s['explored_pct']} |"
        )
    return "\n".join(lines)


def setting_label(mode: str, value: float) -> str:
    """How a setting reads in the tables: the threshold, the guard's accept or delta."""
    if mode == "threshold":
        return f"cosine ≥ {value:.2f}"
    if mode == "guard":
        return f"floor 0.75, score ≥ {value:.2f}"
    return f"δ = {value:g}"


def per_group_markdown(rows: Sequence[dict[str, Any]], mode: str, value: float) -> str:
    lines = [
        "| data set | group | kind | pairs | served % | wrong % (strict) |"
        " wrong % excl. identical |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["mode"] == mode and abs(r["value"] - value) < 1e-9:
            kind = "should hit" if r["should_hit"] else "trap"
            lines.append(
                f"| {r['dataset']} | {r['group']} | {kind} | {r['pairs']} |"
                f" {r['served_pct']} | {r['wrong_pct']} | {r['wrong_excl_identical_pct']} |"
            )
    return "\n".join(lines)


def plot(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], out: Path) -> None:
    """served vs wrongly served per data set (threshold vs guard), and per trap group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.4))
    for axis, dataset in zip(np.atleast_1d(axes), datasets, strict=True):
        for mode, style in (("threshold", "o-"), ("guard", "s-"), ("budget", "D-")):
            points = sorted(
                (s["trap_wrong_excl_identical_pct"], s["should_hit_served_pct"])
                for s in summary
                if s["dataset"] == dataset and s["mode"] == mode
            )
            axis.plot([p[0] for p in points], [p[1] for p in points], style, label=mode)
        axis.set_title(dataset)
        axis.set_xlabel("traps / non-duplicates served wrongly (%, excl. identical question)")
        axis.set_ylabel("should-hit pairs served (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)
    _plot_groups(rows, out, plt)


_AXIS_LABELS = {
    "threshold": "cosine threshold",
    "guard": "guard score threshold",
    "budget": "error budget δ",
}


def _plot_groups(rows: Sequence[dict[str, Any]], out: Path, plt: Any) -> None:
    fow = [r for r in rows if r["dataset"] == "fow-pairs" and not r["should_hit"]]
    groups = sorted({r["group"] for r in fow})
    if not groups:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    for axis, mode in zip(axes, ("threshold", "guard", "budget"), strict=True):
        for group in groups:
            points = sorted(
                (r["value"], r["wrong_excl_identical_pct"])
                for r in fow
                if r["mode"] == mode and r["group"] == group
            )
            axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=group)
        axis.set_title(f"fow-cache traps served wrongly — {mode}")
        axis.set_xlabel(_AXIS_LABELS[mode])
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("wrongly served (%)")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(out / "quality_traps.png", dpi=110)
    plt.close(fig)


def _sweep(
    embedder: Embedder,
    datasets: Sequence[str],
    settings: Sequence[Setting],
    load: dict[str, Loader] | None = None,
) -> tuple[list[dict[str, Any]], Decisions]:
    memo = MemoEmbedder(embedder)
    load = load or loaders()
    rows: list[dict[str, Any]] = []
    decisions: Decisions = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in datasets:
            rows += asyncio.run(
                run_dataset(name, memo, Path(workdir), settings, decisions, load[name])
            )
    return rows, decisions


def run(
    out: Path,
    embedder: Embedder,
    datasets: Sequence[str],
    data: Path | None = None,
    limit: int | None = None,
    service: Settings | None = None,
) -> str:
    """Run the sweep, write quality.json / quality.md / PNGs under `out`, return the text.

    `service`: the settings the budget mode's guard is built from (default: the
    service's defaults).

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    if "qqp" in datasets:  # found from outside: a missing file came after 49 lines of work
        data_file(data)
    rows, _ = _sweep(embedder, datasets, _settings(service), loaders(data, limit))
    summary = overall(rows)
    out.mkdir(parents=True, exist_ok=True)
    command = _command(out, datasets, limit)
    report = {"command": command, "code": code_version(), "summary": summary, "rows": rows}
    (out / "quality.json").write_text(json.dumps(report, indent=1))
    text = report_markdown(report)
    (out / "quality.md").write_text(text + "\n")
    plot(summary, rows, out)
    return text


def _command(out: Path, datasets: Sequence[str], limit: int | None) -> str:
    """The command line that reproduces this run (for the README's generated region)."""
    parts = ["semcache bench quality"]
    if sorted(datasets) != sorted(DATASETS):
        parts.append("--datasets " + " ".join(datasets))
    if limit is not None:
        parts.append(f"--limit {limit}")
    return " ".join([*parts, f"--out {out}"])


def report_markdown(report: dict[str, Any]) -> str:
    """The sweep's tables from its results file (also `semcache bench readme`'s renderer)."""
    summary, rows = report["summary"], report["rows"]
    return "\n\n".join(
        [
            markdown(summary, rows),
            BUDGET_NOTE,
            "Guard only (floor 0.75, score ≥ 0.79; the decision before the error budget):",
            per_group_markdown(rows, "guard", 0.79),
            "Error budget δ = 0.01 (the service's default decision):",
            per_group_markdown(rows, "budget", 0.01),
        ]
    )


BUDGET_NOTE = (
    "budget: the service's default decision (the guard built from the settings, its"
    " candidates served when their estimated P(wrong) fits the error budget δ), with no"
    " exploration and no audits: an explored request would be answered upstream, i.e."
    " not served. The budget is spent over the requests as asked, pairs in file order."
    " Hits on an identical question are right in the excl. identical columns."
)


def _default_settings() -> list[Setting]:
    return [s for s in _settings() if (s[0], s[1]) in DEFAULT_SETTINGS]


def compare_embedders(
    out: Path,
    reference: Embedder,
    candidate: Embedder,
    datasets: Sequence[str],
    data: Path | None = None,
    limit: int | None = None,
) -> str:
    """How often two embedders lead the cache to the same decision, at the default settings.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    load = loaders(data, limit)
    ref_rows, ref = _sweep(reference, datasets, _default_settings(), load)
    cand_rows, cand = _sweep(candidate, datasets, _default_settings(), load)
    lines = [
        f"| data set | verifier | same decision % ({reference.model_id} vs {candidate.model_id})"
        " | served % ref | served % cand | wrong % ref | wrong % cand |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ref_sum = {(s["dataset"], s["mode"]): s for s in overall(ref_rows)}
    cand_sum = {(s["dataset"], s["mode"]): s for s in overall(cand_rows)}
    for key, decisions in ref.items():
        same = sum(a == b for a, b in zip(decisions, cand[key], strict=True))
        r, c = ref_sum[key[:2]], cand_sum[key[:2]]
        lines.append(
            f"| {key[0]} | {key[1]} {key[2]:.2f} | {100 * same / len(decisions):.2f} |"
            f" {r['should_hit_served_pct']} | {c['should_hit_served_pct']} |"
            f" {r['trap_wrong_excl_identical_pct']} | {c['trap_wrong_excl_identical_pct']} |"
        )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    header = f"Command: `{command_line()}`\n\n{machine_note()}.\n\n"
    (out / "embedder_agreement.md").write_text(header + table + "\n")
    return table
