"""API keys change without a restart: on SIGHUP, and when the keys file changes.

A leaked key is revoked by taking it out of the keys file; until now that took a
restart. A file that does not read as a keys file keeps the keys as they were.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
import yaml

from semcache_client import AsyncSemcacheClient
from semcache_client.errors import Unauthenticated
from service.auth import KeyRing, load_keys
from service.errors import AuthenticationError
from service.key_reload import KeysFileWatcher
from tests.test_auth import entry
from tests.test_startup import Serve, serve_environment, serves  # noqa: F401 - the fixture

OLD_KEY = "sk-sc-reload-old-key"
NEW_KEY = "sk-sc-reload-new-key"


def _write(path: Path, *keys: str) -> Path:
    path.write_text(yaml.safe_dump([entry(key, name=f"k{i}") for i, key in enumerate(keys)]))
    return path


def _accepts(ring: KeyRing, key: str) -> bool:
    try:
        ring.authenticate([("authorization", f"Bearer {key}")])
    except AuthenticationError:
        return False
    return True


def test_an_edited_keys_file_replaces_the_keys_and_a_broken_one_keeps_them(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "keys.yaml", OLD_KEY)
    ring = load_keys(path)
    watcher = KeysFileWatcher(ring, path)
    assert watcher.check() is False, "unchanged: not read again"

    _write(path, NEW_KEY)
    assert watcher.check() is True
    assert _accepts(ring, NEW_KEY) and not _accepts(ring, OLD_KEY), "revoked at once"

    path.write_text("keys: [unterminated")
    assert watcher.check() is False
    assert _accepts(ring, NEW_KEY), "a broken file keeps the keys as they were"
    assert watcher.check() is False, "and is not read again until it changes"

    path.unlink()
    assert watcher.check() is False and _accepts(ring, NEW_KEY)
    _write(path, OLD_KEY)
    assert watcher.reload() is True and _accepts(ring, OLD_KEY)


def test_taking_the_last_key_out_of_the_file_revokes_it(tmp_path: Path) -> None:
    """Found from outside: a file rewritten to `keys: []` kept the old keys, so a
    one-key deployment could not revoke its leaked key without a restart. An empty
    list is what the operator wrote: every call is refused until a key is added."""
    path = _write(tmp_path / "keys.yaml", OLD_KEY)
    ring = load_keys(path)
    watcher = KeysFileWatcher(ring, path)

    path.write_text("keys: []\n")
    assert watcher.check() is True
    assert not _accepts(ring, OLD_KEY) and len(ring) == 0

    _write(path, NEW_KEY)
    assert watcher.check() is True and _accepts(ring, NEW_KEY)
    with pytest.raises(ValueError, match="has no keys"):  # at start-up it is still refused
        load_keys(_write(tmp_path / "empty.yaml"))


async def test_serve_takes_new_keys_on_sighup(tmp_path: Path, serves: list[Serve]) -> None:  # noqa: F811
    keys = _write(tmp_path / "keys.yaml", OLD_KEY)
    env = serve_environment(tmp_path, api_keys_file=str(keys))
    serve = await Serve.start(env)
    serves.append(serve)
    serving = await serve.wait_for("semcache serving")
    target = "127.0.0.1:" + re.search(r"address=\S+:(\d+)", serving).group(1)  # type: ignore[union-attr]
    async with (
        AsyncSemcacheClient(target, api_key=OLD_KEY) as old,
        AsyncSemcacheClient(target, api_key=NEW_KEY) as new,
    ):
        assert (await old.stats()).tenant == "acme"
        _write(keys, NEW_KEY)
        serve.process.send_signal(signal.SIGHUP)
        await serve.wait_for("API keys reloaded")
        assert (await new.stats()).tenant == "acme"
        with pytest.raises(Unauthenticated):
            await old.stats()
    serve.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(serve.finish(), 60) == 0, serve.stderr
