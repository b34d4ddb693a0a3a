"""Index rebuilds of the embedded store in a child process, swapped in when done.

Qdrant Edge's `optimize` holds Python's interpreter lock from start to end:
run in the serving process, it stopped everything, health checks included,
for as long as it took (seconds at tens of thousands of entries; README,
"Index rebuilds"). So the store rebuilds a copy instead:

1. **Copy** (write thread, under the write lock): the shard is flushed and its
   directory copied to `<shard>.rebuild`. Writes wait for the copy; lookups go
   on. From here every write to the shard is also noted in a journal.
2. **Build** (a child process, `python -m service.cache.edge_rebuild DIR`, at
   a lower CPU priority): opens the copy, runs `optimize`, closes it. The
   serving process keeps its own interpreter lock and answers meanwhile.
3. **Swap** (indexer thread, under the write lock): the shard is detached
   (lookups wait for the swap), flushed and closed; its directory is renamed
   `<shard>.old`, the copy renamed into place, loaded, the journal replayed on
   it and flushed; then `<shard>.old` is renamed `<shard>.trash` (the commit)
   and deleted, and lookups go on on the rebuilt shard. Loading it holds the
   interpreter lock, so the process stands still for that long.

A crash at any step leaves something `recover` puts right at the next start:
`<shard>.rebuild` or `<shard>.trash` are deleted; `<shard>.old` means the swap
did not commit, so it goes back in place (it holds every write: it was
flushed before the swap, and the journal's writes were applied to it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the child imports no more of the service than this module
    import qdrant_edge as qe

REBUILD_SUFFIX = ".rebuild"
OLD_SUFFIX = ".old"
TRASH_SUFFIX = ".trash"
CHILD_NICENESS = 10  # the serving process comes first for the CPU
PR_SET_PDEATHSIG = 1  # prctl(2)


def sibling(path: Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name (`<shard>.rebuild` and the like)."""
    return path.with_name(path.name + suffix)


def recover(path: Path) -> list[str]:
    """Put right what a rebuild interrupted by a crash left beside the shard in `path`;
    returns what was done, for the log (empty: nothing was left)."""
    done: list[str] = []
    for suffix in (REBUILD_SUFFIX, TRASH_SUFFIX):
        leftover = sibling(path, suffix)
        if leftover.exists():
            shutil.rmtree(leftover)
            done.append(f"deleted {leftover.name}")
    old = sibling(path, OLD_SUFFIX)
    if old.exists():
        if path.exists():
            shutil.rmtree(path)  # the rebuilt copy, maybe without the journal's writes
        old.rename(path)
        done.append(f"put {old.name} back: the swap had not committed")
    return done


def copy_shard(path: Path) -> Path:
    """Copy the (flushed) shard in `path` to `<path>.rebuild`; returns the copy.

    Raises:
        OSError: the copy failed (a full disk); nothing of it is left.
    """
    copy = sibling(path, REBUILD_SUFFIX)
    if copy.exists():
        shutil.rmtree(copy)
    try:
        shutil.copytree(path, copy, copy_function=copy_sparse)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy


def copy_sparse(source: str | Path, target: str | Path) -> None:
    """Copy a file's data and leave its holes holes (and its mode and times).

    Qdrant Edge creates its memory-mapped files long and sparse (141 MiB for a new
    store, filled as entries arrive). `shutil.copyfile` writes the holes out as zeros:
    a copy took 223 MB of disk for 3.9 MB of data, and the rebuilt store kept it. Here
    only the extents the file system reports as data (SEEK_DATA / SEEK_HOLE) are
    copied; where it cannot say, the whole file is.
    """
    size = os.stat(source).st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        for start, end in _data_extents(src.fileno(), size):
            src.seek(start)
            dst.seek(start)
            left = end - start
            while left > 0:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    break
                dst.write(chunk)
                left -= len(chunk)
    shutil.copystat(source, target)


_CHUNK = 1 << 20


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of `fd` that hold data; the whole file where the
    file system does not tell data from holes."""
    extents: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # no data past `offset`
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            offset = end
    except (OSError, AttributeError):  # no SEEK_DATA here: copy it all
        return [(0, size)]
    return extents


def child_command(copy: Path) -> list[str]:
    """The command that rebuilds the index of the shard copied to `copy` (and dies with
    this process)."""
    return [sys.executable, "-m", "service.cache.edge_rebuild", str(copy), str(os.getpid())]


def die_with_parent(parent: int) -> bool:
    """Have the kernel kill this process when its parent dies (Linux's
    PR_SET_PDEATHSIG); False if the parent, `parent`, is already gone.

    A child left running after its service was killed would go on writing a copy that
    the next start deletes, or that the next rebuild copies into. Elsewhere than on
    Linux only the check at the start is made.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def child_result(returncode: int, stdout: bytes, stderr: bytes) -> dict[str, float]:
    """What the child reported.

    Raises:
        RebuildFailedError: it failed; the message is its last line on stderr.
    """
    if returncode == 0:
        try:
            result = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = None
        if isinstance(result, dict):
            return result
    lines = stderr.decode(errors="replace").strip().splitlines()
    raise RebuildFailedError(
        f"the index rebuild process exited with status {returncode}: "
        + (lines[-1] if lines else "(nothing on stderr)")
    )


class RebuildFailedError(RuntimeError):
    """The child process did not rebuild the index."""


def swap(
    path: Path,
    old: qe.EdgeShard,
    copy: Path,
    journal: Sequence[qe.UpdateOperation],
    load: Callable[[Path], qe.EdgeShard],
) -> qe.EdgeShard:
    """Put the rebuilt shard in `copy` in the place of `old` (open on `path`), with the
    writes of `journal` replayed on it; returns it, open. Under the write lock, with
    nothing else holding `old`.

    `old` is flushed and closed first: closed later, it would write its segment files
    by name into `path`, which then holds the rebuilt shard (seen with qdrant-edge-py
    0.9.0). If anything fails, `path` holds the old shard again, closed, and the error
    is raised; the copy is left for `recover`.
    """
    try:
        old.flush()
    finally:
        old.close()
    moved = sibling(path, OLD_SUFFIX)
    path.rename(moved)
    try:
        copy.rename(path)
        shard = _replayed(load(path), journal)
    except BaseException:
        if path.exists():
            path.rename(copy)
        moved.rename(path)
        raise
    trash = sibling(path, TRASH_SUFFIX)
    moved.rename(trash)  # the commit: from here the rebuilt shard is the store
    shutil.rmtree(trash, ignore_errors=True)
    return shard


def _replayed(shard: qe.EdgeShard, journal: Sequence[qe.UpdateOperation]) -> qe.EdgeShard:
    """`shard` with the journal's writes applied and flushed (closed if that fails)."""
    try:
        for operation in journal:
            shard.update(operation)
        shard.flush()
    except BaseException:
        shard.close()
        raise
    return shard


def build(copy: Path) -> dict[str, float]:
    """Open the shard in `copy`, build its index and close it; what was done, for the log."""
    import qdrant_edge as qe  # the child imports nothing else of the service

    started = time.perf_counter()
    shard = qe.EdgeShard.load(str(copy))
    try:
        shard.optimize()
        info = shard.info()
    finally:
        shard.close()
    return {
        "points": info.points_count,
        "indexed": info.indexed_vectors_count,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str]) -> int:
    """`python -m service.cache.edge_rebuild DIR [PARENT_PID]`: one JSON line on success,
    else an error line on stderr and exit status 1 (2: bad arguments, 3: the parent
    given is gone)."""
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print(
            "usage: python -m service.cache.edge_rebuild SHARD_COPY_DIR [PARENT_PID]",
            file=sys.stderr,
        )
        return 2
    if len(argv) == 2 and not die_with_parent(int(argv[1])):
        print("index rebuild not started: the service that asked for it is gone", file=sys.stderr)
        return 3
    with contextlib.suppress(OSError):  # not allowed: it runs at the same priority
        os.nice(CHILD_NICENESS)
    try:
        result = build(Path(argv[0]))
    except Exception as error:
        print(f"index rebuild failed: {error!r}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
