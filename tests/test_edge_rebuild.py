"""Index rebuilds of the embedded store in a child process (`service.cache.edge_rebuild`).

The child is held back by a gate file where a test needs a rebuild under way: the
writes made meanwhile must reach the rebuilt shard (the journal), lookups must go
on, and a crash at any point of the swap must leave a store that opens with every
acknowledged entry.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import qdrant_edge as qe
from structlog.testing import capture_logs

from service.cache import edge_rebuild, edge_store
from service.cache.edge_rebuild import OLD_SUFFIX, REBUILD_SUFFIX, TRASH_SUFFIX, sibling
from service.cache.edge_store import EdgeVectorStore
from service.cache.store import EntryFilter
from service.cache.verify.evidence import Observation
from tests.conftest import REPO
from tests.test_store import DIM, entry, indexed_vectors, search, small_indexable_shard, unit

_GATED = (
    "import pathlib, sys, time\n"
    "gate = pathlib.Path(sys.argv[1])\n"
    "while not gate.exists(): time.sleep(0.01)\n"
    "from service.cache.edge_rebuild import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The rebuild's child waits until this file exists."""
    path = tmp_path / "gate"

    def gated(copy: Path) -> list[str]:
        return [sys.executable, "-c", _GATED, str(path), str(copy)]

    monkeypatch.setattr(edge_store, "child_command", gated)
    yield path
    path.touch()  # never leave a child waiting


async def child_started(store: EdgeVectorStore) -> None:
    """Wait until the rebuild's copy is made and its child runs."""
    async with asyncio.timeout(30):
        while store.rebuilds.child is None:  # noqa: ASYNC110 (the store has no event for it)
            await asyncio.sleep(0.01)


async def filled(path: Path, n: int) -> tuple[EdgeVectorStore, list[str]]:
    small_indexable_shard(path)
    store = EdgeVectorStore(path, DIM)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, point_id in enumerate(ids):
        await store.upsert(point_id, unit(i), entry("a"))
    await asyncio.sleep(0)  # the upserts' read-backs into the memo, next on the loop
    return store, ids


async def test_writes_made_during_a_rebuild_reach_the_rebuilt_shard(
    tmp_path: Path, gate: Path
) -> None:
    """An upsert, a deletion, hit times and evidence written while the child builds
    are replayed on its copy; lookups and writes go on meanwhile."""
    store, ids = await filled(tmp_path / "shard", 40)
    try:
        assert await store.maintain(min_unindexed=10) is True
        await child_started(store)
        assert sibling(tmp_path / "shard", REBUILD_SUFFIX).is_dir()
        found = await search(store, unit(3), "a", "s", time.time(), 1)
        assert found[0].point_id == ids[3], "lookups go on while the child builds"
        added = str(uuid.uuid4())
        await store.upsert(added, unit(100), entry("a"))
        await store.upsert(ids[5], unit(5), entry("b"))  # rewritten for another tenant
        assert await store.delete(EntryFilter(tenant="a", point_id=ids[7])) == 1
        await store.touch([ids[9]], 12345.0)
        await store.add_observations([(ids[11], Observation(time.time(), "obs-1", 0.9, False))])
        gate.touch()  # noqa: ASYNC240 (a file the child polls for)
        async with asyncio.timeout(60):
            assert await store.rebuilds.wait() is True
        assert indexed_vectors(store) == 40
        assert await store.get(added) is not None
        rewritten = await store.get(ids[5])
        assert rewritten is not None and rewritten.tenant == "b"
        assert await store.get(ids[7]) is None
        touched = await store.get(ids[9])
        assert touched is not None and touched.last_hit_at == 12345.0
        judged = await store.get(ids[11])
        assert judged is not None and judged.evidence.observations
        assert not sibling(tmp_path / "shard", REBUILD_SUFFIX).exists()
    finally:
        await store.close()
    reopened = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        assert await reopened.count(EntryFilter()) == 40
        assert indexed_vectors(reopened) == 40
    finally:
        await reopened.close()


async def test_a_failed_rebuild_is_logged_and_the_store_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(copy: Path) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit('no room for the index')"]

    monkeypatch.setattr(edge_store, "child_command", failing)
    store, _ = await filled(tmp_path / "shard", 20)
    with capture_logs() as logs:
        try:
            assert await store.maintain(min_unindexed=10) is True
            assert await store.rebuilds.wait() is False
            await store.upsert(str(uuid.uuid4()), unit(50), entry("a"))
            assert await store.count(EntryFilter()) == 21
            assert store._keeper.journal is None, "no journal kept once the rebuild failed"
        finally:
            await store.close()
    failed = next(e for e in logs if e["event"] == "vector index rebuild failed")
    assert "no room for the index" in failed["error"]
    assert not sibling(tmp_path / "shard", REBUILD_SUFFIX).exists()


async def test_closing_during_a_rebuild_stops_the_child_and_keeps_every_entry(
    tmp_path: Path, gate: Path
) -> None:
    store, _ = await filled(tmp_path / "shard", 20)
    assert await store.maintain(min_unindexed=10) is True
    await store.upsert(str(uuid.uuid4()), unit(60), entry("a"))
    async with asyncio.timeout(30):
        await store.close()  # the gate is never opened: close must not wait for it
    assert not sibling(tmp_path / "shard", REBUILD_SUFFIX).exists()
    reopened = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        assert await reopened.count(EntryFilter()) == 21
    finally:
        await reopened.close()


async def test_a_swap_that_fails_puts_the_old_shard_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = await filled(tmp_path / "shard", 20)
    real_load = store._keeper.load
    loads = []

    def failing_once(path: Path) -> qe.EdgeShard:
        loads.append(path)
        if len(loads) == 1:
            raise OSError("the rebuilt shard cannot be read")
        return real_load(path)

    monkeypatch.setattr(store._keeper, "load", failing_once)
    with capture_logs() as logs:
        try:
            assert await store.maintain(min_unindexed=10) is True
            assert await store.rebuilds.wait() is False
            assert not store.rebuilds.swapping, "lookups do not wait for it any longer"
            assert await store.count(EntryFilter()) == 20
            store._memo.forget(ids)
            assert await store.get(ids[0]) is not None
            found = await search(store, unit(4), "a", "s", time.time(), 1)
            assert found[0].point_id == ids[4]
            assert indexed_vectors(store) == 0, "the old shard, not the rebuilt one"
        finally:
            await store.close()
    assert any("not swapped in" in e["event"] for e in logs)
    for suffix in (OLD_SUFFIX, REBUILD_SUFFIX, TRASH_SUFFIX):
        assert not sibling(tmp_path / "shard", suffix).exists()


async def _closed_store_with(path: Path, n: int) -> list[str]:
    store, ids = await filled(path, n)
    await store.close()
    return ids


async def test_a_swap_interrupted_before_its_commit_is_rolled_back_at_open(
    tmp_path: Path,
) -> None:
    """A crash after the rename but before `.old` became `.trash`: the rebuilt shard may
    lack the journal's writes, so the old one, which has them all, goes back."""
    path = tmp_path / "shard"
    ids = await _closed_store_with(path, 12)
    await _closed_store_with(tmp_path / "copy", 3)  # stands for a copy missing writes
    path.rename(sibling(path, OLD_SUFFIX))
    (tmp_path / "copy").rename(path)
    with capture_logs() as logs:
        store = EdgeVectorStore(path, DIM)
    try:
        assert await store.count(EntryFilter()) == 12
        assert await store.get(ids[11]) is not None
    finally:
        await store.close()
    assert not sibling(path, OLD_SUFFIX).exists()
    assert any("interrupted index rebuild" in e["event"] for e in logs)


@pytest.mark.parametrize("suffix", [REBUILD_SUFFIX, TRASH_SUFFIX])
async def test_a_copy_or_a_committed_swap_left_by_a_crash_is_deleted_at_open(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / "shard"
    await _closed_store_with(path, 5)
    shutil.copytree(path, sibling(path, suffix))
    store = EdgeVectorStore(path, DIM)
    try:
        assert await store.count(EntryFilter()) == 5
    finally:
        await store.close()
    assert not sibling(path, suffix).exists()


def test_the_child_reports_what_it_built(tmp_path: Path) -> None:
    import qdrant_edge as qe

    small_indexable_shard(tmp_path / "shard")
    shard = qe.EdgeShard.load(str(tmp_path / "shard"))
    points = [qe.Point(str(uuid.uuid4()), unit(i).tolist(), {"tenant": "a"}) for i in range(30)]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.close()
    import subprocess

    done = subprocess.run(
        edge_rebuild.child_command(tmp_path / "shard"), capture_output=True, check=False
    )
    result = edge_rebuild.child_result(done.returncode, done.stdout, done.stderr)
    assert result["points"] == 30 and result["indexed"] == 30


def test_a_child_that_failed_is_reported_with_its_last_line() -> None:
    with pytest.raises(edge_rebuild.RebuildFailedError, match="status 1: boom"):
        edge_rebuild.child_result(1, b"", b"Traceback...\nboom\n")
    with pytest.raises(edge_rebuild.RebuildFailedError, match="nothing on stderr"):
        edge_rebuild.child_result(0, b"not json", b"")


_CHILD = (
    "import os, pathlib, sys, time\n"
    "from service.cache.edge_rebuild import die_with_parent\n"
    "assert die_with_parent(int(sys.argv[2]))\n"
    "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
    "time.sleep(120)\n"
)
_PARENT = (
    "import os, subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2], str(os.getpid())])\n"
)


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_the_service_that_started_it(tmp_path: Path) -> None:
    """A service killed mid-rebuild leaves no child writing a copy the next start deletes."""
    import os
    import signal
    import subprocess

    pid_file = tmp_path / "child.pid"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _CHILD, str(pid_file)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "no child started"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.02)
    finally:
        parent.kill()


def test_a_child_whose_parent_is_gone_does_not_start(tmp_path: Path) -> None:
    import subprocess

    command = [sys.executable, "-m", "service.cache.edge_rebuild", str(tmp_path), "1"]
    done = subprocess.run(command, capture_output=True, check=False)  # its parent: pytest
    assert done.returncode == 3
    assert b"the service that asked for it is gone" in done.stderr
    done = subprocess.run([*command[:-1], "x"], capture_output=True, check=False)
    assert done.returncode == 2 and b"usage:" in done.stderr


async def test_lookups_during_the_swap_wait_for_it_instead_of_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miss would ask the provider; the swap takes a fraction of a second."""
    import threading

    store, ids = await filled(tmp_path / "shard", 20)
    store._memo.forget(ids)  # an exact lookup must read the shard
    loading, release = threading.Event(), threading.Event()
    real_load = store._keeper.load

    def held(path: Path) -> qe.EdgeShard:
        loading.set()
        release.wait(30)
        return real_load(path)

    monkeypatch.setattr(store._keeper, "load", held)
    try:
        assert await store.maintain(min_unindexed=10) is True
        async with asyncio.timeout(60):
            while not loading.is_set():  # noqa: ASYNC110 (set on the indexer thread)
                await asyncio.sleep(0.01)
        assert store.rebuilds.swapping
        found = asyncio.create_task(search(store, unit(4), "a", "s", time.time(), 1))
        fetched = asyncio.create_task(store.get(ids[6]))
        await asyncio.sleep(0.05)
        assert not found.done() and not fetched.done(), "they wait for the swap"
        release.set()
        async with asyncio.timeout(60):
            assert (await found)[0].point_id == ids[4]
            assert await fetched is not None
            assert await store.rebuilds.wait() is True
        assert not store.rebuilds.swapping
    finally:
        release.set()
        await store.close()


def _beside(shard: Path) -> list[str]:
    """What lies beside the shard's directory (a rebuild's copy, the old shard...)."""
    return sorted(p.name for p in shard.parent.iterdir() if p.name.startswith(shard.name + "."))


_KILLED_MID_REBUILD = """
import asyncio, os, signal, sys, uuid
from pathlib import Path
from service.cache import edge_store
from service.cache.edge_store import EdgeVectorStore
from tests.test_store import DIM, entry, small_indexable_shard, unit

path, where = Path(sys.argv[1]), sys.argv[2]
gate = path.with_name("gate")
waits = "import pathlib, sys, time\\n" \\
    "from service.cache.edge_rebuild import die_with_parent, main\\n" \\
    "assert die_with_parent(int(sys.argv[3]))\\n" \\
    "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.01)\\n" \\
    "sys.exit(main(sys.argv[2:3]))\\n"
edge_store.child_command = lambda copy: [
    sys.executable, "-c", waits, str(gate), str(copy), str(os.getpid())
]

def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

async def main() -> None:
    small_indexable_shard(path)
    store = EdgeVectorStore(path, DIM)
    for i in range(40):
        point_id = str(uuid.uuid4())
        await store.upsert(point_id, unit(i), entry("a"))
        print("acked", point_id, flush=True)
        if i == 29:  # the rebuild's copy holds the first 30; the journal the rest
            assert await store.maintain(min_unindexed=10)
            while store.rebuilds.child is None:
                await asyncio.sleep(0.01)
            print("child", store.rebuilds.child.pid, flush=True)
    if where == "during the build":
        killed()
    real_load = store._keeper.load
    def load(shard_path: Path):
        if store.rebuilds.swapping:
            killed()  # renamed: the copy in place, the old shard beside it
        return real_load(shard_path)
    store._keeper.load = load
    gate.touch()
    await store.rebuilds.wait()

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("where", ["during the build", "in the swap"])
async def test_sigkill_mid_rebuild_loses_no_acknowledged_write(tmp_path: Path, where: str) -> None:
    """Killed while the child builds, or between the swap's renames and its commit: the
    next start has every acknowledged write, journalled ones included, and no child."""
    import subprocess

    shard = tmp_path / "shard"
    killed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _KILLED_MID_REBUILD, str(shard), where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    lines = [line.split() for line in killed.stdout.splitlines()]
    acked = [words[1] for words in lines if words[0] == "acked"]
    (child,) = [int(words[1]) for words in lines if words[0] == "child"]
    assert len(acked) == 40
    async with asyncio.timeout(30):
        while _alive(child):  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.02)
    with capture_logs() as logs:
        store = EdgeVectorStore(shard, DIM, on_damage="refuse")
    try:
        assert await store.count(EntryFilter()) == 40
        assert all([await store.get(point_id) is not None for point_id in acked])
    finally:
        await store.close()
    assert _beside(shard) == ["shard.manifest.json"]
    cleaned = [e for e in logs if "interrupted index rebuild" in e["event"]]
    assert cleaned, "the start said what it put right"
    if where == "in the swap":
        assert "put shard.old back" in cleaned[-1]["done"]


def _allocated(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in [path, *path.rglob("*")] if f.is_file())


def test_a_sparse_file_is_copied_with_its_holes(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    with open(source, "wb") as file:
        file.truncate(32 << 20)
        file.seek(5 << 20)
        file.write(b"data" * 1024)
        file.seek((32 << 20) - 3)
        file.write(b"end")
    if _allocated(source) > 1 << 20:
        pytest.skip("this file system does not keep holes")
    edge_rebuild.copy_sparse(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert _allocated(target) <= _allocated(source) + (64 << 10)


def test_a_shards_copy_takes_the_disk_its_data_does(tmp_path: Path) -> None:
    """Qdrant Edge's files are long and sparse; a copy written out whole took 223 MB for
    3.9 MB of data, and the rebuilt store kept it."""
    shard = tmp_path / "shard"
    small_indexable_shard(shard)
    if _allocated(shard) > 16 << 20:
        pytest.skip("this file system does not keep holes")
    copy = edge_rebuild.copy_shard(shard)
    assert _allocated(copy) <= 2 * _allocated(shard) + (1 << 20)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == sorted(
        p.relative_to(shard) for p in shard.rglob("*")
    )
