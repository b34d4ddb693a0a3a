"""API keys: the keys file, metadata forms, roles, open mode, and the interceptor on a server."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.auth import (
    MISSING_KEY_MESSAGE,
    UNKNOWN_KEY_MESSAGE,
    AuthenticationError,
    KeyRing,
    PermissionDeniedError,
    Principal,
    add_key,
    check_open_mode_bind,
    current_principal,
    generate_key,
    hash_key,
    is_loopback,
    load_keys,
    require_admin,
    require_principal,
    resolve_tenant,
)
from service.errors import StartupError
from service.transport.grpc.auth import Authenticator, load_server_credentials
from service.transport.grpc.interceptors import ServiceInterceptor
from service.transport.grpc.server import security_from
from tests.conftest import make_settings, make_tls_pair

CLIENT_KEY = "sk-sc-client-test-key"
ADMIN_KEY = "sk-sc-admin-test-key"


def entry(
    key: str, tenant: str = "acme", role: str = "client", name: str = "svc"
) -> dict[str, str]:
    return {"key_sha256": hash_key(key), "tenant": tenant, "role": role, "name": name}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    entries = [entry(CLIENT_KEY), entry(ADMIN_KEY, "ops", "admin", "root")]
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture
def ring(keys_file: Path) -> KeyRing:
    return load_keys(keys_file)


# --- hashing and key generation ------------------------------------------------------


def test_keys_are_stored_as_their_sha256() -> None:
    assert hash_key("sk-sc-abc") == hashlib.sha256(b"sk-sc-abc").hexdigest()


def test_generated_key_is_random_and_its_entry_holds_only_the_hash() -> None:
    key, new_entry = generate_key("acme", "client", "billing")
    other, _ = generate_key("acme", "client", "billing")
    assert key.startswith("sk-sc-")
    assert len(key) >= len("sk-sc-") + 43  # 32 random bytes, base64url
    assert key != other
    assert new_entry == {
        "name": "billing",
        "tenant": "acme",
        "role": "client",
        "key_sha256": hash_key(key),
    }
    assert key not in json.dumps(new_entry)


def test_generate_key_rejects_a_bad_role() -> None:
    with pytest.raises(ValueError, match="role 'root'"):
        generate_key("acme", "root", "svc")  # type: ignore[arg-type]


def test_add_key_appends_to_a_private_file_that_authenticates_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first = add_key(path, "acme", "client", "billing")
    second = add_key(path, "ops", "admin", "root")
    ring = load_keys(path)
    assert ring.authenticate([("x-api-key", first)]) == Principal("acme", "client", "billing")
    assert ring.authenticate([("x-api-key", second)]) == Principal("ops", "admin", "root")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first not in path.read_text()


def test_add_key_refuses_a_name_already_used(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "acme", "client", "billing")
    with pytest.raises(ValueError, match="'billing' is already used"):
        add_key(path, "other", "client", "billing")
    assert len(json.loads(path.read_text())) == 1


# --- the keys file ---------------------------------------------------------------------


def test_json_file_with_keys_under_a_keys_field(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry(CLIENT_KEY)]}))
    assert len(load_keys(path)) == 1


def test_hashes_are_accepted_in_upper_case(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    raw = entry(CLIENT_KEY) | {"key_sha256": hash_key(CLIENT_KEY).upper()}
    path.write_text(yaml.safe_dump([raw]))
    assert load_keys(path).authenticate([("x-api-key", CLIENT_KEY)]).tenant == "acme"


PLAINTEXT = {"key": "sk-sc-x", "tenant": "a", "role": "client", "name": "n"}
BAD_FILES: list[tuple[str, str]] = [
    ("- [unclosed", "not valid YAML or JSON"),
    ("keys: 3", "must hold a list of keys"),
    ("[]", "has no keys"),
    ("- just-a-string", "entry 0 must be a mapping"),
    (yaml.safe_dump([PLAINTEXT]), "entry 0 holds a plaintext 'key'"),
    (yaml.safe_dump([entry("k") | {"tenat": "a"}]), "entry 0 has unknown fields ['tenat']"),
    (yaml.safe_dump([{"key_sha256": hash_key("k")}]), "entry 0 lacks ['name', 'role', 'tenant']"),
    (yaml.safe_dump([entry("k") | {"key_sha256": "abc"}]), "entry 0: key_sha256 must be 64 hex"),
    (yaml.safe_dump([entry("k", role="root")]), "entry 0: role 'root' is not one of client, admin"),
    (yaml.safe_dump([entry("k", tenant="a b")]), "entry 0: tenant 'a b' is not valid"),
    (yaml.safe_dump([entry("k") | {"tenant": 7}]), "entry 0: tenant 7 is not valid"),
    (yaml.safe_dump([entry("k"), entry("k", name="x")]), "entry 1 ('x') repeats the key"),
    (yaml.safe_dump([entry("k"), entry("j")]), "entry 1: name 'svc' is already used"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_keys_file_names_the_file_and_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}")) as raised:
        load_keys(path)
    assert message in str(raised.value)


def test_a_missing_keys_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the API keys file .*nope\.yaml"):
        load_keys(tmp_path / "nope.yaml")


# --- metadata forms --------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {CLIENT_KEY}")],
        [("authorization", f"bearer   {CLIENT_KEY} ")],
        [("x-api-key", CLIENT_KEY)],
        [("x-api-key", CLIENT_KEY.encode())],
        [("x-tenant-id", "someone-else"), ("X-Api-Key", CLIENT_KEY)],
        [("authorization", f"Bearer {CLIENT_KEY}"), ("x-api-key", CLIENT_KEY)],
    ],
)
def test_a_key_in_any_accepted_form_names_its_tenant(
    ring: KeyRing, metadata: list[tuple[str, str | bytes]]
) -> None:
    assert ring.authenticate(metadata) == Principal("acme", "client", "svc")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], MISSING_KEY_MESSAGE),
        ([("x-tenant-id", "acme")], MISSING_KEY_MESSAGE),
        ([("x-api-key", "  ")], MISSING_KEY_MESSAGE),
        ([("x-api-key", "sk-sc-guess")], UNKNOWN_KEY_MESSAGE),
        ([("authorization", "Basic dXNlcjpwYXNz")], "must be 'Bearer <key>'"),
        ([("authorization", "Bearer")], "must be 'Bearer <key>'"),
        ([("authorization", f"Bearer {CLIENT_KEY}"), ("x-api-key", ADMIN_KEY)], "two different"),
    ],
)
def test_no_or_bad_key_is_refused_with_a_clear_message(
    ring: KeyRing, metadata: list[tuple[str, str | bytes]], message: str
) -> None:
    with pytest.raises(AuthenticationError) as raised:
        ring.authenticate(metadata)
    assert message in str(raised.value)


# --- roles -----------------------------------------------------------------------------

CLIENT = Principal("acme", "client", "svc")
ADMIN = Principal("ops", "admin", "root")


def test_admin_actions_need_an_admin_key() -> None:
    require_admin(ADMIN, "invalidating every tenant")
    with pytest.raises(PermissionDeniedError, match="invalidating every tenant requires an admin"):
        require_admin(CLIENT, "invalidating every tenant")


def test_a_client_acts_on_its_own_tenant_only() -> None:
    assert resolve_tenant(CLIENT, None) == "acme"
    assert resolve_tenant(CLIENT, "") == "acme"
    assert resolve_tenant(CLIENT, "acme") == "acme"
    with pytest.raises(PermissionDeniedError, match="acting on tenant 'globex'"):
        resolve_tenant(CLIENT, "globex")


def test_an_admin_may_act_on_any_tenant() -> None:
    assert resolve_tenant(ADMIN, None) == "ops"
    assert resolve_tenant(ADMIN, "globex") == "globex"


def test_require_principal_fails_closed_when_nothing_is_bound() -> None:
    with pytest.raises(AuthenticationError):
        require_principal()


# --- open mode and TLS -----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_open_mode_may_bind_loopback(host: str) -> None:
    assert is_loopback(host)
    check_open_mode_bind(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.5", "example.com"])
def test_open_mode_refuses_other_addresses_and_says_what_to_set(host: str) -> None:
    with pytest.raises(ValueError, match="set SEMCACHE_API_KEYS_FILE"):
        check_open_mode_bind(host)


def test_tls_files_that_are_missing_or_not_pem_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    missing = r"cannot read the TLS private key .*key\.pem: .*; check SEMCACHE_TLS_KEY_FILE"
    with pytest.raises(ValueError, match=missing):
        load_server_credentials(cert, key)
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    cert.write_text("hello")
    not_pem = r"TLS certificate .*cert\.pem is not PEM; check SEMCACHE_TLS_CERT_FILE"
    with pytest.raises(ValueError, match=not_pem):
        load_server_credentials(cert, key)


def test_a_key_that_does_not_match_its_certificate_is_named_at_start(tmp_path: Path) -> None:
    """gRPC's core takes the pair and then fails to add the port, which read as "the
    address could not be bound": the pair is checked first, and named."""
    cert, _ = make_tls_pair(tmp_path / "one")
    _, other_key = make_tls_pair(tmp_path / "two")
    settings = make_settings(
        "edge", tmp_path / "data", "http://127.0.0.1:9/v1",
        tls_cert_file=cert, tls_key_file=other_key,
    )  # fmt: skip
    with pytest.raises(StartupError) as caught:
        security_from(settings)
    message = str(caught.value)
    assert "SEMCACHE_TLS_KEY_FILE" in message and "\n" not in message


# --- the interceptor on an in-process server -------------------------------------------


async def who_am_i(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    principal = require_principal()
    return f"{principal.tenant}/{principal.role}/{principal.key_name}".encode()


async def who_am_i_stream(
    request: bytes, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield await who_am_i(request, context)


def echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i),
            "WhoAmIStream": grpc.unary_stream_rpc_method_handler(who_am_i_stream),
        },
    )


async def start(
    keyring: KeyRing | None, port_of: Callable[[grpc.aio.Server], int]
) -> grpc.aio.Server:
    interceptor = ServiceInterceptor(authenticator=Authenticator(keyring))
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((echo_handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port_of(server)
    await server.start()
    return server


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[KeyRing | None], Any]]:
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def serve_with(keyring: KeyRing | None) -> grpc.aio.Channel:
        ports: list[int] = []
        server = await start(keyring, lambda s: ports.append(s.add_insecure_port("127.0.0.1:0")))
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}"))
        return channels[-1]

    yield serve_with
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def call(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    reply: bytes = await channel.unary_unary("/test.Echo/WhoAmI")(b"", metadata=metadata)
    return reply.decode()


async def test_a_known_key_binds_its_tenant_and_ignores_the_claimed_one(
    serve: Any, ring: KeyRing
) -> None:
    channel = await serve(ring)
    metadata = (("authorization", f"Bearer {CLIENT_KEY}"), ("x-tenant-id", "ops"))
    assert await call(channel, metadata) == "acme/client/svc"
    assert await call(channel, (("x-api-key", ADMIN_KEY),)) == "ops/admin/root"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [((), MISSING_KEY_MESSAGE), ((("x-api-key", "sk-sc-guess"),), UNKNOWN_KEY_MESSAGE)],
)
async def test_calls_without_a_known_key_are_unauthenticated(
    serve: Any, ring: KeyRing, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    channel = await serve(ring)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, metadata)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == message


async def test_streaming_calls_are_authenticated_too(serve: Any, ring: KeyRing) -> None:
    channel = await serve(ring)
    stream = channel.unary_stream("/test.Echo/WhoAmIStream")
    replies = [r async for r in stream(b"", metadata=(("x-api-key", CLIENT_KEY),))]
    assert replies == [b"acme/client/svc"] * 2
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        _ = [r async for r in stream(b"")]
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_health_checks_need_no_key(serve: Any, ring: KeyRing) -> None:
    channel = await serve(ring)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_open_mode_trusts_the_claimed_tenant_as_admin(serve: Any) -> None:
    channel = await serve(None)
    assert await call(channel, (("x-tenant-id", "acme"),)) == "acme/admin/open-mode"
    assert await call(channel) == "default/admin/open-mode"


async def test_the_principal_does_not_leak_out_of_the_rpc(serve: Any, ring: KeyRing) -> None:
    channel = await serve(ring)
    await call(channel, (("x-api-key", CLIENT_KEY),))
    assert current_principal.get() is None


async def test_tls_serves_with_the_configured_certificate(
    tls_files: tuple[Path, Path], ring: KeyRing
) -> None:
    cert, key = tls_files
    credentials = load_server_credentials(cert, key)
    ports: list[int] = []
    server = await start(
        ring, lambda s: ports.append(s.add_secure_port("localhost:0", credentials))
    )
    trust = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    try:
        async with grpc.aio.secure_channel(f"localhost:{ports[0]}", trust) as channel:
            assert await call(channel, (("x-api-key", CLIENT_KEY),)) == "acme/client/svc"
    finally:
        await server.stop(0)


def test_open_mode_refuses_two_different_tenants() -> None:
    """Found from outside: two x-tenant-id values were resolved to the first, silently."""
    from service.auth import principal_for

    both = [("x-tenant-id", "acme"), ("x-tenant-id", "globex")]
    with pytest.raises(AuthenticationError, match="two different x-tenant-id values"):
        principal_for(None, both)
    same = [("x-tenant-id", "acme"), ("X-Tenant-Id", "acme")]
    assert principal_for(None, same).tenant == "acme"
    assert principal_for(None, []).tenant == "default"


def test_a_keys_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """Found from outside: it was 'utf-8 codec can't decode byte 0xff', naming nothing."""
    path = tmp_path / "keys.yaml"
    path.write_bytes(b"\xff\xfe keys")
    with pytest.raises(ValueError, match=r"keys\.yaml is not UTF-8 text"):
        load_keys(path)
