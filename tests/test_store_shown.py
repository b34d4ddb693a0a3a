"""What start-up says about the store: which one the settings open (a blank
SEMCACHE_QDRANT_URL falls back to the embedded store, `:memory:` keeps nothing),
and never a password written into the Qdrant URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cache.factory import store_description
from service.config import Settings
from service.startup import startup_error_for
from service.urls import shown_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@qdrant:6333", "http://user:***@qdrant:6333"),
        ("https://:secret@q.example/x?y=1", "https://:***@q.example/x?y=***"),
        ("http://user@qdrant:6333", "http://user@qdrant:6333"),
        ("http://qdrant:6333", "http://qdrant:6333"),
        ("http://admin@s3cret@qdrant:6333", "http://***@qdrant:6333"),
        ("http://qdrant:6333/?api_key=s3cret&x=1", "http://qdrant:6333/?api_key=***&x=***"),
    ],
)
def test_a_password_in_a_url_is_never_shown(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_an_unreachable_servers_line_hides_its_password() -> None:
    """Found from outside: `http://user:pw@127.0.0.1:1` was echoed whole on stderr."""
    settings = Settings(qdrant_url="http://user:hunter2@127.0.0.1:1")
    line = str(startup_error_for(ConnectionError("refused"), settings))
    assert "hunter2" not in line and "user:***@127.0.0.1:1" in line


def test_the_start_up_log_names_the_store_the_settings_open(tmp_path: Path) -> None:
    assert "embedded Qdrant Edge" in store_description(Settings(data_dir=tmp_path, qdrant_url=None))
    assert "embedded Qdrant Edge" in store_description(Settings(data_dir=tmp_path, qdrant_url=""))
    memory = store_description(Settings(qdrant_url=":memory:"))
    assert "emptied at every restart" in memory
    server = store_description(Settings(qdrant_url="http://u:pw@qdrant:6333"))
    assert "Qdrant server at http://u:***@qdrant:6333" in server


def test_an_invalid_url_setting_is_echoed_without_its_password() -> None:
    """Found from outside: `ftp://admin:s3cretPW@host` was echoed whole by the one-line
    'invalid settings' error."""
    from pydantic import ValidationError

    from service.startup import settings_error

    with pytest.raises(ValidationError) as caught:
        Settings(qdrant_url="ftp://admin:s3cretPW@host")
    line = str(settings_error(caught.value))
    assert "s3cretPW" not in line and "SEMCACHE_QDRANT_URL" in line
