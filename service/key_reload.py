"""The API keys file, read again while the service runs: on SIGHUP, and when it changes.

A key is revoked or added by editing the keys file (`semcache keys add`, or a
Kubernetes Secret mounted as the file); the service takes the new keys without
a restart. `KeysFileWatcher.check` compares the file's identity and size and
modification time with what was last read (a Secret update swaps a symlink, so
the identity changes) and reloads when they differ; `reload` reads it whatever
they say (SIGHUP). The new ring replaces the old one in place, so both doors,
which share the one `KeyRing`, see it at once. A file that does not read as a
keys file (missing, half written, malformed) leaves the keys as they were: an
error in the log, never a service that accepts everyone. A file that reads as
an empty list is taken as it says: the last key was taken out, so every call is
refused until a key is added (found from outside: the old keys stayed, and a
one-key deployment could not revoke its leaked key without a restart).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from service.auth import KeyRing, load_keys
from service.periodic import Periodic

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 5.0  # how late an edited keys file is noticed without a SIGHUP

_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class KeysFileWatcher:
    """Keeps `keyring` what `path` says; see the module docstring."""

    def __init__(self, keyring: KeyRing, path: Path, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.keyring, self.path = keyring, path
        self._seen = _stamp(path)
        self._loop = Periodic(interval_s, self._check)

    def check(self) -> bool:
        """Reload if the file changed since it was last read; whether it was reloaded."""
        if _stamp(self.path) == self._seen:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Read the file and take its keys; whether they were taken (a bad file is logged
        and the keys stay as they were)."""
        self._seen = _stamp(self.path)
        try:
            fresh = load_keys(self.path, allow_empty=True)
        except ValueError as error:
            log.error("API keys file not reloaded; the previous keys stay", reason=str(error))
            return False
        before = len(self.keyring)
        self.keyring.replace_with(fresh)
        if not len(fresh):
            log.warning(
                "API keys file has no keys: every call is refused until a key is added",
                path=str(self.path),
                before=before,
            )
            return True
        log.info("API keys reloaded", path=str(self.path), keys=len(fresh), before=before)
        return True

    def start(self) -> None:
        """Check the file every `interval_s` in the background (once)."""
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()

    async def _check(self) -> None:
        try:
            self.check()
        except Exception as error:  # the next check tries again
            log.error("API keys file check failed", error=repr(error))
