"""Free-space accounting for the embedded store, so a full disk pauses storing
instead of killing the process.

Qdrant Edge writes through memory-mapped files that it creates sparse: a fresh
shard's files are about 141 MiB long but occupy almost nothing until pages are
touched. Touching a page when the disk has no block left for it is not an error
the engine can report: the kernel sends SIGBUS and the process dies, without a
log line. On tmpfs even reading a hole of a shared mapping claims a page, which
is why loading a shard on a full tmpfs crashed too.

So the space the store may still claim is the disk's free space minus the
unfilled part of every file the store already has ("room"). The store writes
only while its room stays above a watermark (`SEMCACHE_MIN_FREE_DISK_MB`),
opens a shard only when its room is not negative, and resumes on its own when
space returns. Room is measured (a walk of the shard's files, a `statvfs`) at
most once per `interval_s`; between measurements each admitted write is
subtracted from it, so a burst cannot run past the watermark unseen. What this
cannot see is another program filling the same disk between two measurements:
the watermark is the margin for that.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from service.cache.store import StoreHealth

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
# A fresh shard's files are 141.4 MiB long (qdrant-edge 0.9.0, 384-d, either
# vector storage): what creating one may claim before the first entry.
NEW_SHARD_BYTES = 150 * MIB
MEASURE_INTERVAL_S = 1.0


def _file_stats(path: Path) -> Iterator[os.stat_result]:
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                yield os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue  # the engine replaced it while we walked


def unfilled_bytes(path: Path) -> int:
    """Bytes the files under `path` may still claim: their length minus what they occupy."""
    return sum(max(0, s.st_size - s.st_blocks * 512) for s in _file_stats(path))


def apparent_bytes(path: Path) -> int:
    """The summed length of the files under `path` (what they may occupy once filled)."""
    return sum(s.st_size for s in _file_stats(path))


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.0f} MiB"


class DiskGuard:
    """Whether the store in `path` may write: its room against a `min_free_bytes` watermark.

    Not thread-safe: the store calls it only under its write lock (on its write
    thread, or inline for an upsert); `health` (replaced, never mutated) may be read
    from anywhere.
    """

    def __init__(
        self,
        path: Path,
        min_free_bytes: int,
        interval_s: float = MEASURE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._min_free_bytes = min_free_bytes
        self._interval_s = interval_s
        self._clock = clock
        self._room_bytes = 0
        self._measured_at = -float("inf")
        self.health = StoreHealth(writable=True)

    def measure(self) -> int:
        """Measure the room now (blocking: walks the store's files); returns it in bytes."""
        existing = self._path.exists() and any(self._path.iterdir())
        claim = unfilled_bytes(self._path) if existing else NEW_SHARD_BYTES
        free = shutil.disk_usage(self._nearest_existing()).free
        self._room_bytes = free - claim
        self._measured_at = self._clock()
        return self._room_bytes

    def _nearest_existing(self) -> Path:
        path = self._path
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def can_open(self) -> bool:
        """Whether opening (or creating) the shard cannot run out of disk; pauses if not."""
        room = self.measure()
        if room < 0:
            self._pause(f"disk full: the store needs {_mib(-room)} more free space to open")
            return False
        return True

    def admit(self, n_bytes: int) -> bool:
        """Whether a store of about `n_bytes` may go ahead with the watermark kept free;
        pauses storing if not, resumes it if so. An admitted write is counted against
        the room until the next measurement."""
        if self.fits(n_bytes, self._min_free_bytes):
            self._resume()
            return True
        self._pause(self._full_reason())
        return False

    def fits(self, n_bytes: int, keep_free_bytes: int) -> bool:
        """Whether a write of about `n_bytes` leaves `keep_free_bytes` of room (a
        deletion passes 0); if so it is counted against the room. Never pauses storing."""
        stale = self._clock() - self._measured_at >= self._interval_s
        if stale or (self.health.writable and self._room_bytes - n_bytes < keep_free_bytes):
            self.measure()
        if self._room_bytes - n_bytes < keep_free_bytes:
            return False
        self._room_bytes -= n_bytes
        return True

    def fresh(self) -> bool:
        """Whether the room was measured within the interval (no walk of the files due)."""
        return self._clock() - self._measured_at < self._interval_s

    @property
    def min_free_bytes(self) -> int:
        """The watermark: room kept free for everything but new entries."""
        return self._min_free_bytes

    def refresh(self) -> None:
        """Re-measure, and pause or resume storing accordingly (the upkeep loop's call)."""
        if self.measure() < self._min_free_bytes:
            self._pause(self._full_reason())
        else:
            self._resume()

    def _full_reason(self) -> str:
        return (
            f"disk nearly full: {_mib(max(0, self._room_bytes))} left for the store at"
            f" {self._path}, {_mib(self._min_free_bytes)} kept free (SEMCACHE_MIN_FREE_DISK_MB)"
        )

    def _pause(self, reason: str) -> None:
        if self.health.writable:
            log.warning("cache storing paused", reason=reason, path=str(self._path))
        self.health = StoreHealth(writable=False, reason=reason)

    def _resume(self) -> None:
        if not self.health.writable:
            log.info("cache storing resumed: disk space is back", path=str(self._path))
            self.health = StoreHealth(writable=True)
