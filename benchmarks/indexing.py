"""`semcache bench indexing`: how long the embedded store's index rebuilds stop the service.

    semcache bench indexing [--points 40000] [--step 2000] [--out DIR]

Qdrant Edge builds its HNSW index inside `optimize()`, which holds Python's
interpreter lock from start to end: run in the service's process, its event
loop answers nothing meanwhile, health checks included. This grows three
embedded stores side by side, `--step` points at a time, and after each step
asks each to rebuild, as the service's upkeep loop does once
`SEMCACHE_INDEX_AFTER_POINTS` points lack an index (`--step` plays that
setting):

* `engine default`: the shard as semcache created it until 2026-12-01, the
  engine indexing only once 10 MB of vectors (6,667 points of 384
  dimensions) lack an index, whatever the setting said, rebuilt in process;
* `index after --step`: the engine's indexing threshold set from
  `SEMCACHE_INDEX_AFTER_POINTS`, rebuilt in process (semcache until this
  change);
* `index after --step, in a child`: the service's own store
  (`EdgeVectorStore`, as semcache serves now) through its upkeep call
  (`maintain`): the shard is copied, indexed in a child process and swapped
  in (`service.cache.edge_rebuild`).

The first two are opened as the service opens its store
(`edge_shard.open_shard`, RAM vectors, its payload indexes, one search
thread); all three get the same points: unit vectors drawn at random (384
dimensions, the embedder's; random vectors have no clusters, the hard case
for HNSW) with a tenant. The stores take turns, step by step, so load from
other processes falls on all of them.

For each rebuild the report gives its wall time, the longest pause a Python
thread of this process saw meanwhile (a thread that wakes every millisecond:
with the lock held throughout, its pause is the whole rebuild; this is how
long the service answers nothing), for the child the time its copy took
(writes wait) and its swap kept the store detached (lookups and writes
wait), and the p50 of 50 filtered searches after it.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from benchmarks.floors import ratio
from benchmarks.report import Row, machine_note, markdown_table, progress, write_results
from service.cache.edge_shard import open_shard
from service.cache.edge_store import EdgeVectorStore

DIM = 384
SEARCHES = 50
_TICK_S = 0.001


@dataclass
class Ticker:
    """A thread that wakes every millisecond and notes when; its pauses are the lock's holds."""

    ticks: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.ticks.append(time.perf_counter())

    @contextmanager
    def running(self) -> Iterator[Ticker]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def longest_pause_s(self, start: float, end: float) -> float:
        """The longest time without a tick that overlaps [start, end]."""
        before = [t for t in self.ticks if t <= start]
        inside = [t for t in self.ticks if start < t <= end]
        after = [t for t in self.ticks if t > end]
        marks = [before[-1] if before else start, *inside, after[0] if after else end]
        return max(b - a for a, b in itertools.pairwise(marks))


def _unit_vectors(rng: np.random.Generator, n: int) -> list[list[float]]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.tolist()  # type: ignore[no-any-return]


def _points(rng: np.random.Generator, n: int) -> list[qe.Point]:
    return [qe.Point(str(uuid.uuid4()), row, {"tenant": "t"}) for row in _unit_vectors(rng, n)]


def _search_p50_ms(shard: qe.EdgeShard, rng: np.random.Generator) -> float:
    condition = qe.FieldCondition(key="tenant", match=qe.MatchValue("t"))
    times = []
    for vector in _unit_vectors(rng, SEARCHES):
        request = qe.QueryRequest(
            limit=5,
            query=qe.Query.Nearest(vector),
            filter=qe.Filter(must=[condition]),
            with_payload=False,
            params=qe.SearchParams(hnsw_ef=64),
        )
        started = time.perf_counter()
        shard.query(request)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def _rebuild(shard: qe.EdgeShard, ticker: Ticker) -> tuple[bool, float, float]:
    """Whether `optimize` indexed anything, its wall time (s), the longest pause (s)."""
    started = time.perf_counter()
    did = shard.optimize()
    ended = time.perf_counter()
    time.sleep(3 * _TICK_S)  # let the ticker note the end of a pause
    return did, ended - started, ticker.longest_pause_s(started, ended)


def _rebuild_in_child(
    runner: asyncio.Runner, store: EdgeVectorStore, step: int, ticker: Ticker
) -> _Rebuilt:
    """The service's upkeep call (`maintain`), then the wait for the child's index to
    be swapped in: whether one was, the wall time, the longest pause of this process,
    and how long the copy (writes wait) and the swap (lookups and writes wait) took."""

    async def upkeep() -> bool:
        return await store.maintain(step) and await store.rebuilds.wait()

    started = time.perf_counter()
    did = runner.run(upkeep())
    ended = time.perf_counter()
    time.sleep(3 * _TICK_S)
    last = store.rebuilds.last if did else None
    copy_s, swap_s = (last.copy_seconds, last.swap_seconds) if last else (0.0, 0.0)
    return did, ended - started, ticker.longest_pause_s(started, ended), copy_s, swap_s


_Rebuilt = tuple[bool, float, float, float, float]


def grow(points: int, step: int, root: Path, seed: int = 0) -> list[Row]:
    """The three stores grown `step` points at a time to `points`, a row per step and
    store: two shards rebuilt in this process, and the service's store (a child)."""
    variants = {"engine default": None, f"index after {step}": step}
    shards = {
        name: open_shard(root / str(i), DIM, "ram", 1, after)
        for i, (name, after) in enumerate(variants.items())
    }
    child = f"index after {step}, in a child"
    store = EdgeVectorStore(root / "child", DIM, storage="ram", index_after_points=step)
    shards[child] = store.shard
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    runner = asyncio.Runner()  # one loop for the store, as in the service
    try:
        with Ticker().running() as ticker:
            for size in range(step, points + 1, step):
                batch = _points(rng, step)  # the same points for all three
                for name in shards:
                    shards[name].update(qe.UpdateOperation.upsert_points(batch))
                    if name == child:
                        did, wall_s, pause_s, copy_s, swap_s = _rebuild_in_child(
                            runner, store, step, ticker
                        )
                        shards[name] = store.shard  # the rebuilt one, swapped in
                    else:
                        did, wall_s, pause_s = _rebuild(shards[name], ticker)
                        copy_s = swap_s = 0.0
                    info = shards[name].info()
                    rows.append(
                        {
                            "variant": name,
                            "points": size,
                            "rebuilt": did,
                            "rebuild_s": round(wall_s, 3),
                            "longest_pause_s": round(pause_s, 3),
                            "copy_s": round(copy_s, 3),
                            "detached_s": round(swap_s, 3),
                            "indexed": info.indexed_vectors_count,
                            "search_p50_ms": _search_p50_ms(shards[name], rng),
                        }
                    )
                progress(f"indexing: {size}/{points} points")
    finally:
        for name, shard in shards.items():
            if name != child:
                shard.close()
        runner.run(store.close())
        runner.close()
    return rows


def summarise(rows: list[Row]) -> list[Row]:
    """Per store: rebuilds, longest and total pause, search p50 over the steps."""
    summary: list[Row] = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        pauses = [r["longest_pause_s"] for r in mine if r["rebuilt"]]
        searches = [r["search_p50_ms"] for r in mine]
        summary.append(
            {
                "variant": name,
                "rebuilds": len(pauses),
                "longest_pause_s": max(pauses, default=0.0),
                "total_pause_s": round(sum(pauses), 3),
                "search_p50_mean_ms": round(statistics.fmean(searches), 3),
                "search_p50_max_ms": max(searches),
            }
        )
        for key in ("copy_s", "detached_s"):
            longest = max((r[key] for r in mine if r["rebuilt"]), default=0.0)
            summary[-1][f"longest_{key}"] = longest
    base, *others = summary
    for tuned in others:
        for key in ("longest_pause_s", "total_pause_s", "search_p50_mean_ms"):
            tuned[f"{key}_x_default"] = ratio(tuned[key], base[key])
    return summary


SUMMARY_COLUMNS = (
    ("variant", "store"),
    ("rebuilds", "rebuilds"),
    ("longest_pause_s", "longest pause s"),
    ("longest_pause_s_x_default", "÷ engine default"),
    ("total_pause_s", "total pause s"),
    ("total_pause_s_x_default", "÷ engine default"),
    ("search_p50_mean_ms", "search p50 ms (mean of steps)"),
    ("search_p50_mean_ms_x_default", "÷ engine default"),
    ("search_p50_max_ms", "search p50 ms (worst step)"),
    ("longest_copy_s", "longest copy s (writes wait)"),
    ("longest_detached_s", "longest swap s (lookups wait)"),
)


def steps_table(rows: list[Row]) -> list[Row]:
    """One row per size: each store's pause (when it rebuilt) and search p50."""
    table: dict[int, Row] = {}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    for row in rows:
        index = names.index(row["variant"])
        line = table.setdefault(row["points"], {"points": row["points"]})
        line[f"pause_{index}"] = row["longest_pause_s"] if row["rebuilt"] else ""
        line[f"search_{index}"] = row["search_p50_ms"]
    return list(table.values())


def markdown(report: dict[str, Any]) -> str:
    names = [row["variant"] for row in report["summary"]]
    step_columns = [("points", "points")]
    for index, name in enumerate(names):
        step_columns += [
            (f"pause_{index}", f"{name}: pause s"),
            (f"search_{index}", f"{name}: search p50 ms"),
        ]
    return "\n\n".join(
        [
            f"{report['points']:,} points in steps of {report['step']:,}, {DIM} dimensions."
            f" {report['machine']}.",
            markdown_table(report["summary"], SUMMARY_COLUMNS),
            "After each step (a pause only where the store rebuilt its index):",
            markdown_table(steps_table(report["rows"]), tuple(step_columns)),
        ]
    )


def run(out_dir: Path, points: int, step: int) -> str:
    """Grow the three stores, write indexing.json and indexing.md under `out_dir`."""
    if step < 1 or points < step:
        raise ValueError("--step must be at least 1 and --points at least --step")
    progress(f"indexing: three stores to {points} points, {step} at a time")
    with tempfile.TemporaryDirectory(prefix="semcache-indexing-") as root:
        rows = grow(points, step, Path(root))
    report: dict[str, Any] = {
        "points": points,
        "step": step,
        "machine": machine_note(),
        "summary": summarise(rows),
        "rows": rows,
    }
    text = markdown(report)
    write_results(out_dir, "indexing", report, text)
    return text
