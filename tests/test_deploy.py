"""The deployment files stay honest: they parse, pin their images, probe the served port,
and set only settings that exist. Plus the container health probe, against a live server."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.transport.grpc import healthcheck
from tests.conftest import Service

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_VARS = {f"SEMCACHE_{name.upper()}" for name in Settings.model_fields}
GRPC_PORT = Settings.model_fields["grpc_port"].default


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _k8s() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/sidecar.yaml").read_text()) if d]


def _dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _semcache_vars(names: list[str]) -> set[str]:
    return {name for name in names if name.startswith("SEMCACHE_")}


# --- docker-compose.yml ----------------------------------------------------------


def test_compose_has_qdrant_semcache_and_the_simulator() -> None:
    services = _compose()["services"]
    assert set(services) == {"qdrant", "semcache", "upstream-sim"}
    # Found from outside: published on every interface, an unauthenticated Qdrant and a
    # service whose admin key is in the repository were open to the network.
    assert "127.0.0.1:50051:50051" in services["semcache"]["ports"]
    assert {"127.0.0.1:6333:6333", "127.0.0.1:6334:6334"} <= set(services["qdrant"]["ports"])
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert all(str(port).startswith("127.0.0.1:") for port in published), published
    command = services["upstream-sim"]["command"]
    assert command[:1] == ["simulate-upstream"] and "0.0.0.0" in command and "8000" in command


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: pin {image!r} to a version"
    # qdrant-client 1.20 accepts servers one minor version either side
    qdrant = _compose()["services"]["qdrant"]["image"]
    assert re.fullmatch(r"qdrant/qdrant:v1\.(19|20|21)\.\d+", qdrant)


def test_compose_services_have_health_checks_and_start_in_order() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    probe = services["semcache"]["healthcheck"]["test"]
    assert probe[1:3] == ["semcache", "health"]
    depends_on = services["semcache"]["depends_on"]
    assert depends_on == {
        "qdrant": {"condition": "service_healthy"},
        "upstream-sim": {"condition": "service_healthy"},
    }
    assert "qdrant-storage" in _compose()["volumes"]
    assert any(v.startswith("qdrant-storage:") for v in services["qdrant"]["volumes"])


def test_compose_sets_only_real_settings_and_uses_qdrant_over_grpc() -> None:
    environment = _compose()["services"]["semcache"]["environment"]
    assert _semcache_vars(list(environment)) - SETTINGS_VARS == set()
    assert environment["SEMCACHE_QDRANT_URL"] == "http://qdrant:6333"  # REST; gRPC on 6334
    assert environment["SEMCACHE_QDRANT_PREFER_GRPC"] == "true"
    assert "upstream-sim:8000/v1" in environment["SEMCACHE_UPSTREAM_BASE_URL"]
    # As compose passes them: `${VAR:-default}` with VAR unset is the default.
    values = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in environment.items()}
    Settings(**{k.removeprefix("SEMCACHE_").lower(): v for k, v in values.items()})


# --- deploy/k8s/sidecar.yaml -----------------------------------------------------


def _pod_spec() -> dict[str, Any]:
    (deployment,) = [d for d in _k8s() if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _semcache_container() -> dict[str, Any]:
    containers = _pod_spec().get("initContainers", []) + _pod_spec()["containers"]
    (semcache,) = [c for c in containers if c["name"] == "semcache"]
    assert isinstance(semcache, dict)
    return semcache


def test_k8s_sidecar_probes_the_served_port_over_grpc() -> None:
    semcache = _semcache_container()
    served = {port["containerPort"] for port in semcache["ports"]}
    assert served == {GRPC_PORT}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert semcache[probe]["grpc"]["port"] == GRPC_PORT, probe
    assert semcache["readinessProbe"]["grpc"]["service"] == "semcache.v1.SemanticCacheService"
    assert semcache.get("restartPolicy") == "Always"  # a native sidecar


def test_k8s_sidecar_sets_resources_and_runs_unprivileged() -> None:
    semcache = _semcache_container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(semcache["resources"][kind]), kind
    assert _pod_spec()["securityContext"]["runAsNonRoot"] is True
    assert semcache["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_env_comes_from_real_settings() -> None:
    by_name = {d["metadata"]["name"]: d for d in _k8s()}
    config, secret = by_name["semcache-config"], by_name["semcache-secrets"]
    names = list(config["data"]) + list(secret["stringData"])
    assert set(names) == _semcache_vars(names) and set(names) <= SETTINGS_VARS
    assert config["data"]["SEMCACHE_GRPC_PORT"] == str(GRPC_PORT)
    sources = _semcache_container()["envFrom"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources
    app_env = [e["name"] for c in _pod_spec()["containers"] for e in c.get("env", [])]
    assert _semcache_vars(app_env) <= SETTINGS_VARS


def test_k8s_sidecar_binds_all_interfaces_only_with_api_keys() -> None:
    by_name = {d["metadata"]["name"]: d for d in _k8s()}
    config = by_name["semcache-config"]["data"]
    assert config["SEMCACHE_GRPC_HOST"] == "0.0.0.0"
    keys_path = config["SEMCACHE_API_KEYS_FILE"]
    mounts = _semcache_container()["volumeMounts"]
    mount = next(m for m in mounts if keys_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in _pod_spec()["volumes"] if v["name"] == mount["name"])
    keys_secret = by_name[volume["secret"]["secretName"]]
    assert keys_path.rsplit("/", 1)[1] in keys_secret["stringData"]


# --- Dockerfile ------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    lines = _dockerfile()
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    assert all("python:3.11-slim" in line for line in lines if line.startswith("ARG PYTHON"))
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_installs_cpu_torch_before_the_project() -> None:
    lines = _dockerfile()
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    install = re.compile(r"pip install .*-c constraints\.txt \.$")
    project = next(i for i, line in enumerate(lines) if install.search(line))
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]
    assert torch < project
    export = next(i for i, line in enumerate(lines) if "build_embedder('onnx-int8'" in line)
    assert project < export


def test_dockerfile_installs_the_simulator_beside_the_server_and_no_benchmarks() -> None:
    # compose and k8s run `semcache simulate-upstream` from this image; the benchmarks
    # are not in the server's wheel, nor copied in.
    lines = _dockerfile()
    assert "COPY simulator ./simulator" in lines
    simulator = re.compile(r"pip install .*-c constraints\.txt \./simulator$")
    assert any(simulator.search(line) for line in lines)
    assert not any("benchmarks" in line for line in lines)


def test_dockerfile_installs_the_thin_client_for_the_client_commands() -> None:
    """Found from outside: `docker exec … semcache stats` (or import, invalidate) was a
    ModuleNotFoundError traceback in the image, which lacked semcache-client."""
    lines = _dockerfile()
    assert "COPY clients/python ./clients/python" in lines
    client = re.compile(r"pip install .*-c constraints\.txt \./clients/python$")
    assert any(client.search(line) for line in lines)


def test_dockerfile_health_check_ports_and_entrypoint() -> None:
    lines = _dockerfile()
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert '"semcache", "health"' in health
    (expose,) = [line for line in lines if line.startswith("EXPOSE ")]
    assert set(expose.split()[1:]) == {str(GRPC_PORT), "9464"}
    assert 'ENTRYPOINT ["semcache"]' in lines and 'CMD ["serve"]' in lines
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "SEMCACHE_GRPC_HOST=0.0.0.0" in env
    assert set(re.findall(r"\b(SEMCACHE_[A-Z_]+)=", env)) <= SETTINGS_VARS


# --- semcache health -------------------------------------------------------------


async def test_healthcheck_passes_against_a_serving_server(service: Service) -> None:
    target = f"127.0.0.1:{service.server.port}"
    assert await asyncio.to_thread(healthcheck.main, ["--target", target]) == 0
    named = ["--target", target, "--service", "semcache.v1.SemanticCacheService"]
    assert await asyncio.to_thread(healthcheck.main, named) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_healthcheck_fails_on_a_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--target", f"127.0.0.1:{_closed_port()}", "--timeout-s", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_healthcheck_reads_the_port_from_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    monkeypatch.setenv("SEMCACHE_GRPC_PORT", str(port))
    assert healthcheck.main(["--timeout-s", "1"]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_compose_semcache_listens_on_all_interfaces_only_with_api_keys() -> None:
    from service.auth import load_keys

    semcache = _compose()["services"]["semcache"]
    environment = semcache["environment"]
    assert environment["SEMCACHE_GRPC_HOST"] == "0.0.0.0"
    container_path = environment["SEMCACHE_API_KEYS_FILE"]
    host_path = next(
        v.split(":")[0] for v in semcache["volumes"] if v.split(":")[1] == container_path
    )
    keyring = load_keys(ROOT / host_path)  # a real, parseable keys file
    assert keyring is not None


async def test_healthcheck_probes_a_tls_server_over_tls(
    tls_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Docker HEALTHCHECK runs `semcache health` beside the server, with its
    settings: a server with TLS was probed in plaintext and never looked healthy."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    from service.transport.grpc.auth import load_server_credentials
    from tests.conftest import make_tls_pair

    cert, key = tls_files
    other_cert, _ = make_tls_pair(tmp_path / "other")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", load_server_credentials(cert, key))
    await server.start()
    target = ["--target", f"127.0.0.1:{port}", "--timeout-s", "5"]

    def probe(*more: str) -> int:
        return healthcheck.main([*target, *more])

    try:
        monkeypatch.delenv("SEMCACHE_TLS_CERT_FILE", raising=False)
        assert await asyncio.to_thread(probe) == 1, "plaintext to a TLS port"
        assert await asyncio.to_thread(probe, "--tls-ca", str(cert)) == 0
        assert await asyncio.to_thread(probe, "--tls-ca", str(other_cert)) == 1, "untrusted"
        wrong_name = ("--tls-ca", str(cert), "--tls-server-name", "elsewhere.example")
        assert await asyncio.to_thread(probe, *wrong_name) == 1
        monkeypatch.setenv("SEMCACHE_TLS_CERT_FILE", str(cert))
        monkeypatch.setenv("SEMCACHE_TLS_KEY_FILE", str(key))
        assert await asyncio.to_thread(probe) == 0, "the server's own settings say TLS"
    finally:
        await server.stop(0)
