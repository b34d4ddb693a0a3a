"""What `semcache serve` checks before it serves, and how a failure reads.

Every start-up failure an operator can fix is a `StartupError` (see
`service.errors`) whose message is one line: what is wrong; what to change.
This module turns the known failures into one: invalid settings, a data
directory another server holds, and the errors of loading files and models.
The CLI prints the line as `semcache serve: <line>` and exits with status 1.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.config import Settings
from service.embedding.errors import EmbeddingModelError
from service.errors import StartupError
from service.urls import shown_url

# Errors of the clients the Qdrant server backend talks through.
_CLIENT_LIBRARIES = frozenset({"httpx", "httpcore", "qdrant_client", "grpc"})
_BIND_HINTS = {
    errno.EADDRINUSE: "stop the other server, or set {port_setting} to a free port (0 picks one)",
    errno.EADDRNOTAVAIL: "set {host_setting} to an address of this machine, e.g. 127.0.0.1",
    errno.EACCES: "ports below 1024 need privileges: set {port_setting} to 1024 or above",
}


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


def load_settings() -> Settings:
    """`Settings()` from the environment.

    Raises:
        StartupError: a setting is invalid; the message names each variable.
    """
    try:
        return Settings()
    except ValidationError as error:
        raise settings_error(error) from error
    except SettingsError as error:  # a value the source could not parse (JSON settings)
        raise source_error(error) from error


def source_error(error: SettingsError) -> StartupError:
    """The one-line StartupError for a setting pydantic-settings could not even parse."""
    field = _SOURCE_FIELD.search(str(error))
    if field is None:
        return StartupError(f"invalid settings: {one_line(error)}; change or unset it")
    variable = f"SEMCACHE_{field.group(1).upper()}"
    return StartupError(f"invalid settings: {variable} is not valid JSON; change or unset it")


_SOURCE_FIELD = re.compile(r'field "([a-z0-9_]+)"')


def settings_error(error: ValidationError) -> StartupError:
    """The one-line StartupError for `Settings()`'s validation error: each variable and why."""
    problems = ", ".join(_setting_problem(each) for each in error.errors())
    return StartupError(f"invalid settings: {problems}; change or unset them")


def _setting_problem(error: Any) -> str:
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return reason  # a rule across settings: its message names them
    name = str(error["loc"][0])
    variable = name if name.isupper() else f"SEMCACHE_{name.upper()}"
    if "key" in name.lower() and "file" not in name.lower():
        return f"{variable} is invalid ({reason})"  # never echo a secret
    value = str(error["input"])
    if "url" in name.lower():
        value = shown_url(value)  # a password written into it stays out of the line
    return f"{variable}={value!r} is invalid ({reason})"


@contextlib.contextmanager
def data_dir_lock(settings: Settings) -> Iterator[None]:
    """Hold an exclusive lock on the embedded store while the server runs.

    Two servers on one store would share its files; the second one is refused
    here, before it loads anything. Nothing is locked for a Qdrant server.

    Raises:
        StartupError: another process holds the lock, or the directory cannot
            be created.
    """
    if settings.qdrant_url:
        yield
        return
    path = settings.data_dir / f"{settings.qdrant_collection}.lock"
    descriptor = _open_lock_file(path)
    try:
        _take_lock(descriptor, settings.data_dir)
        yield
    finally:
        os.close(descriptor)


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        reason = error.strerror
        if path.parent.exists() and not path.parent.is_dir():
            reason = "it is a file, not a directory"  # mkdir says only "File exists"
        raise StartupError(
            f"cannot use the data directory {path.parent}: {reason};"
            " set SEMCACHE_DATA_DIR to a directory this user may write"
        ) from error


def _take_lock(descriptor: int, data_dir: Path) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        raise StartupError(
            f"the data directory {data_dir} is in use by another semcache server;"
            " stop it, or set SEMCACHE_DATA_DIR to another directory"
        ) from error


def bind_problem(host: str, port: int, port_setting: str, host_setting: str) -> str:
    """Why `host:port` cannot be listened on, and what to change, as one line.

    Binds a throwaway socket to find the reason (gRPC does not report it).
    """
    reason = "the address could not be bound"
    for family, kind, proto, _, address in _addresses(host, port):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                hint = _BIND_HINTS.get(error.errno or 0, "check {host_setting}, {port_setting}")
                what = hint.format(port_setting=port_setting, host_setting=host_setting)
                return f"{(error.strerror or str(error)).lower()}; {what}"
    return reason


def _addresses(host: str, port: int) -> list[Any]:
    try:
        return socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        return []


def startup_error_for(error: Exception, settings: Settings) -> StartupError | None:
    """The one-line form of an error raised while building the service, when it is
    a known kind: a missing or malformed file, model or setting value. Its message
    says what is wrong; the setting whose value it names is added as what to change."""
    if isinstance(error, StartupError):
        return error
    if settings.qdrant_url and _is_connection_error(error):
        return StartupError(
            f"cannot reach the Qdrant server at {shown_url(settings.qdrant_url)}"
            f" ({_detail(error)});"
            " start it, or fix SEMCACHE_QDRANT_URL"
        )
    if not isinstance(error, (EmbeddingModelError, ValueError, OSError)):
        return None
    message = one_line(error)
    if "SEMCACHE_" in message:
        return StartupError(message)
    named = [f"SEMCACHE_{name.upper()}" for name, value in settings if _named_in(value, message)]
    if isinstance(error, EmbeddingModelError) and not named:
        named = ["SEMCACHE_EMBEDDING_MODEL_PATH", "SEMCACHE_EMBEDDING_CACHE_DIR"]
    return StartupError(f"{message}; check {' or '.join(named or ['the SEMCACHE_* settings'])}")


def _named_in(value: object, message: str) -> bool:
    """Whether a path or URL setting's value appears in `message`."""
    is_location = isinstance(value, Path) or (isinstance(value, str) and "/" in value)
    return is_location and str(value) in message


def _is_connection_error(error: Exception) -> bool:
    library = type(error).__module__.split(".")[0]
    return isinstance(error, ConnectionError) or library in _CLIENT_LIBRARIES


def _detail(error: Exception) -> str:
    details = getattr(error, "details", None)
    text = details() if callable(details) else str(error)
    return one_line(text or type(error).__name__)
