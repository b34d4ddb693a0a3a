"""Who is calling: API keys mapped to a tenant and a role, checked on every call.

A caller sends its key as `authorization: Bearer <key>` or `x-api-key: <key>`.
Each door (the gRPC interceptor, the HTTP middleware) looks the key up in a
`KeyRing` (loaded from the keys file, `SEMCACHE_API_KEYS_FILE`) and binds the
caller's `Principal` in `current_principal` for the handler; with a keys file
the tenant always comes from the key, never from what the caller claims.
Health checks and server reflection need no key, so load balancers and
grpcurl keep working.

Keys are stored hashed, with plain SHA-256. A password hash (bcrypt, scrypt,
argon2) exists to slow down guessing of low-entropy secrets; our keys are 32
random bytes (256 bits) from `secrets`, which no amount of guessing finds, so a
slow hash would only add latency to every RPC. SHA-256 also makes the lookup a
dict access keyed by the digest, which leaks nothing useful through timing: an
attacker cannot steer which digest their guess produces.

With no keys file the service runs in *open mode*: every caller is trusted,
names its tenant in `x-tenant-id` (default "default") and gets the admin role.
That is only safe because open mode refuses to listen beyond loopback
(`check_open_mode_bind`): every caller is then a process on this host, inside
the operator's own trust boundary, which could read the data directory anyway.
Giving them the client role would not isolate tenants either, since a caller
can claim any tenant it likes; it would only make the admin RPCs unusable
until keys are set up.

Errors (subclasses of `SemcacheError`):

    AuthenticationError      UNAUTHENTICATED: no key, a malformed header, or an unknown key
    PermissionDeniedError    PERMISSION_DENIED: a client key asked for an admin action
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import structlog
import yaml

from service.errors import AuthenticationError, PermissionDeniedError
from service.validation import NAME_PATTERN, NAME_RULE

log = structlog.get_logger(__name__)

Role = Literal["client", "admin"]
ROLES: tuple[Role, ...] = ("client", "admin")
KEY_PREFIX = "sk-sc-"
OPEN_MODE_TENANT_KEY = "x-tenant-id"
OPEN_MODE_DEFAULT_TENANT = "default"
OPEN_MODE_KEY_NAME = "open-mode"
OPEN_MODE_WARNING = (
    "no API keys file (SEMCACHE_API_KEYS_FILE): running open, every caller is trusted"
    " and names its tenant in x-tenant-id; listening on loopback only"
)
MISSING_KEY_MESSAGE = "missing API key: send 'authorization: Bearer <key>' or 'x-api-key'"
UNKNOWN_KEY_MESSAGE = "unknown API key"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_FIELDS = frozenset({"key_sha256", "tenant", "role", "name"})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the tenant it acts for, its role, and its key's name."""

    tenant: str
    role: Role
    key_name: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


def require_principal() -> Principal:
    """The caller the door bound for this call (gRPC interceptor, HTTP middleware).

    Raises:
        AuthenticationError: no caller is bound (fails closed if the interceptor is missing).
    """
    principal = current_principal.get()
    if principal is None:
        raise AuthenticationError("no authenticated caller for this call")
    return principal


def require_admin(principal: Principal, action: str = "this call") -> None:
    """Allow `action` only to an admin key.

    Raises:
        PermissionDeniedError: the key has the client role.
    """
    if not principal.is_admin:
        raise PermissionDeniedError(
            f"{action} requires an admin API key; key {principal.key_name!r} is a client key"
            f" of tenant {principal.tenant!r}"
        )


def resolve_tenant(principal: Principal, requested: str | None) -> str:
    """The tenant an RPC acts on: the caller's own, or (admins only) the one requested.

    Raises:
        PermissionDeniedError: a client key asked for another tenant.
    """
    if not requested or requested == principal.tenant:
        return principal.tenant
    require_admin(principal, f"acting on tenant {requested!r}")
    return requested


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as stored in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The known API keys, by the SHA-256 of each key."""

    def __init__(self, principals_by_hash: Mapping[str, Principal]) -> None:
        self._by_hash = dict(principals_by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    def replace_with(self, other: KeyRing) -> None:
        """Take `other`'s keys in place of these, at once (for every holder of this ring)."""
        self._by_hash = other._by_hash

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The principal whose key is in `metadata` (gRPC invocation metadata).

        Raises:
            AuthenticationError: no key, two different keys, a malformed
                `authorization` value, or a key not in the ring.
        """
        principal = self._by_hash.get(hash_key(presented_key(metadata)))
        if principal is None:
            raise AuthenticationError(UNKNOWN_KEY_MESSAGE)
        return principal


def presented_key(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The API key in `authorization: Bearer <key>` or `x-api-key: <key>` metadata.

    Raises:
        AuthenticationError: none sent, two different ones, or `authorization`
            that is not a bearer token.
    """
    keys = {key for name, value in metadata if (key := _key_from(name.lower(), value))}
    if not keys:
        raise AuthenticationError(MISSING_KEY_MESSAGE)
    if len(keys) > 1:
        raise AuthenticationError("two different API keys sent: send exactly one")
    return keys.pop()


def _key_from(name: str, value: str | bytes) -> str | None:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if name == "x-api-key":
        return text.strip() or None
    if name != "authorization":
        return None
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("authorization (header or metadata) must be 'Bearer <key>'")
    return token.strip()


def load_keys(path: Path, allow_empty: bool = False) -> KeyRing:
    """Read the keys file: YAML or JSON, a list of entries (or that list under `keys:`).

    Each entry is `{key_sha256: <64 hex>, tenant: <name>, role: client|admin,
    name: <name>}`; names and hashes must be unique. An empty list is a ring that
    refuses every key when `allow_empty` (a reload: the operator took the last key
    out), else an error (at start-up, a server no one could call is a mistake).

    Raises:
        ValueError: the file is missing, unreadable, malformed, or an entry is
            invalid; the message names the file and the entry.
    """
    return KeyRing(_index(_read_entries(path, allow_empty), path))


def _index(entries: list[Any], path: Path) -> dict[str, Principal]:
    by_hash: dict[str, Principal] = {}
    names: set[str] = set()
    for index, raw in enumerate(entries):
        where = f"{path}: entry {index}"
        digest, principal = _parse_entry(raw, where)
        if digest in by_hash:
            raise ValueError(f"{where} ({principal.key_name!r}) repeats the key of another entry")
        if principal.key_name in names:
            raise ValueError(f"{where}: name {principal.key_name!r} is already used")
        by_hash[digest] = principal
        names.add(principal.key_name)
    return by_hash


def _read_entries(path: Path, allow_empty: bool = False) -> list[Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read the API keys file {path}: {error.strerror}") from error
    except UnicodeDecodeError:  # found from outside: reported without the file's name
        raise ValueError(f"API keys file {path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ValueError(f"API keys file {path} is not valid YAML or JSON: {error}") from error
    if isinstance(document, dict) and set(document) == {"keys"}:
        document = document["keys"]
    if not isinstance(document, list):
        raise ValueError(f"API keys file {path} must hold a list of keys (or one under 'keys:')")
    if not document and not allow_empty:
        raise ValueError(f"API keys file {path} has no keys; every call would be refused")
    return document


def _parse_entry(raw: Any, where: str) -> tuple[str, Principal]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with key_sha256, tenant, role and name")
    if "key" in raw:
        raise ValueError(
            f"{where} holds a plaintext 'key'; store its SHA-256 as key_sha256 instead"
            " (`semcache keys add` writes entries)"
        )
    if unknown := set(raw) - _ENTRY_FIELDS:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
    if missing := _ENTRY_FIELDS - set(raw):
        raise ValueError(f"{where} lacks {sorted(missing)}")
    digest = str(raw["key_sha256"]).strip().lower()
    if not _SHA256_HEX.match(digest):
        raise ValueError(f"{where}: key_sha256 must be 64 hex digits (the SHA-256 of the key)")
    return digest, _principal(raw["tenant"], raw["role"], raw["name"], where)


def _principal(tenant: Any, role: Any, name: Any, where: str) -> Principal:
    for field, value in (("tenant", tenant), ("name", name)):
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise ValueError(f"{where}: {field} {value!r} is not valid: {NAME_RULE}")
    if role not in ROLES:
        raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    return Principal(tenant=tenant, role=cast(Role, role), key_name=name)


def generate_key(tenant: str, role: Role, name: str) -> tuple[str, dict[str, str]]:
    """A new random API key and its keys-file entry (which holds only its hash).

    The key is shown once; the file never holds it.

    Raises:
        ValueError: tenant, role or name is invalid.
    """
    _principal(tenant, role, name, "new key")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {"name": name, "tenant": tenant, "role": role, "key_sha256": hash_key(key)}
    return key, entry


def add_key(path: Path, tenant: str, role: Role, name: str) -> str:
    """Generate a key, append its entry to the keys file (created if absent), return the key.

    The file is rewritten as JSON if its name ends in `.json`, else as YAML,
    and is made readable by its owner only.

    Raises:
        ValueError: the existing file is invalid, or the name is already used.
    """
    entries: list[Any] = _read_entries(path) if path.exists() else []
    key, entry = generate_key(tenant, role, name)
    entries.append(entry)
    _index(entries, path)
    if path.suffix == ".json":
        text = json.dumps(entries, indent=2) + "\n"
    else:
        text = yaml.safe_dump({"keys": entries}, sort_keys=False)
    _write_private(path, text)
    return key


def _write_private(path: Path, text: str) -> None:
    # Written beside the target and renamed over it: a crash never leaves half a file.
    staging = path.with_name(path.name + ".tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    staging.replace(path)


def is_loopback(host: str) -> bool:
    """Whether `host` (as given to the gRPC server) only accepts calls from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_open_mode_bind(host: str) -> None:
    """Refuse to run without API keys on a non-loopback address; call when no keys file is set.

    Raises:
        ValueError: `host` is not 127.0.0.0/8, ::1 or localhost.
    """
    if not is_loopback(host):
        raise ValueError(
            f"refusing to serve {host!r} without API keys: set SEMCACHE_API_KEYS_FILE"
            " (create keys with `semcache keys add`), or bind SEMCACHE_GRPC_HOST to 127.0.0.1"
        )


def principal_for(
    keyring: KeyRing | None, metadata: Sequence[tuple[str, str | bytes]]
) -> Principal:
    """The caller behind `metadata` (header or gRPC metadata pairs, lower-case names).

    With a `KeyRing`, the key decides; with none (open mode) the caller's
    `x-tenant-id` is trusted and it gets the admin role (see the module
    docstring for why).

    Raises:
        AuthenticationError: keys are configured and `metadata` has no known key, or
            (open mode) it names two different tenants.
    """
    if keyring is not None:
        return keyring.authenticate(metadata)
    tenants = {str(value) for name, value in metadata if name.lower() == OPEN_MODE_TENANT_KEY}
    if len(tenants) > 1:  # which one was meant is not ours to guess
        raise AuthenticationError("two different x-tenant-id values sent: send exactly one")
    tenant = tenants.pop() if tenants else OPEN_MODE_DEFAULT_TENANT
    return Principal(tenant=tenant, role="admin", key_name=OPEN_MODE_KEY_NAME)
