"""The gateways `semcache bench peers` measures side by side: how each is started and asked.

A gateway is a name, the pid whose CPU time is its cost, and one coroutine
`ask(prompt, policy)` that sends one chat completion and says what the cache
did, as a `benchmarks.load.Sample` (outcome `direct`, `bypass`, `miss`,
`exact_hit`, `semantic_hit` or `error`, and the round trip in ms). The policy
is `default` (look up, store a miss), `bypass` (neither) or `refresh` (store
without looking up: how the harness caches the questions it will ask again,
so that none of them is stored as a semantic hit on another):

* `direct`: the upstream simulator itself, over HTTP (the floor of a miss);
  the policy changes nothing.
* `semcache gRPC`: `Complete` through the generated stub, the policy as
  `CACHE_POLICY_BYPASS` / `CACHE_POLICY_REFRESH`.
* `semcache HTTP`: the same process's OpenAI-compatible door, the policy as
  the `x-semcache-cache` header; the outcome is its `x-semcache-cache-status`
  header.
* the peer (`--peer`):
  * `litellm`: the LiteLLM proxy, `litellm[proxy]==LITELLM_VERSION`, run from a
    virtualenv of its own (`.semcache/peers-venv`, created on first use): its
    dependencies pin older huggingface_hub, rich and python-dateutil than
    semcache's, so it does not go into semcache's environment. One uvicorn
    worker, its in-memory cache (`cache_params: {type: local}`: LiteLLM's
    defaults of 200 entries and a 600 s TTL), no database, no master key
    (loopback only, like semcache's open mode), logging at WARNING. A hit is a
    reply carrying `x-litellm-cache-key`; bypassing sends
    `cache: {no-cache: true, no-store: true}` (no lookup, no store, as
    semcache's bypass), refreshing `cache: {no-cache: true}`.
  * `semcache`: a second `semcache serve` asked through its HTTP door, standing
    in for a peer so the harness can be tested without LiteLLM.

Every HTTP gateway is asked with the same aiohttp client code and body, so
client-side costs are alike; each has its own connection pool.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.data import REPO_ROOT
from benchmarks.load import Sample, call_unary
from benchmarks.procs import free_port, stop
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

MODEL = "gpt-4o-mini"
# Pinned: the proxy is third-party code run on this machine, and the figures are
# this version's. Change it deliberately, never let it float.
LITELLM_VERSION = "1.108.7"
PEERS_VENV = REPO_ROOT / ".semcache" / "peers-venv"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
TIMEOUT_S = 60.0

Ask = Callable[[str, str], Awaitable[Sample]]
POLICIES = ("default", "bypass", "refresh")
GRPC_POLICIES = {
    "default": pb.CACHE_POLICY_DEFAULT,
    "bypass": pb.CACHE_POLICY_BYPASS,
    "refresh": pb.CACHE_POLICY_REFRESH,
}
LITELLM_POLICIES: dict[str, dict[str, Any]] = {
    "default": {},
    "bypass": {"cache": {"no-cache": True, "no-store": True}},
    "refresh": {"cache": {"no-cache": True}},
}


@dataclass(frozen=True)
class Gateway:
    """One thing a request can be sent through; `pid` is the process whose CPU it costs."""

    name: str
    pid: int | None
    ask: Ask


@dataclass(frozen=True)
class Peer:
    """A running peer gateway: what it is, where it listens, its process."""

    kind: str
    label: str
    base_url: str
    pid: int


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _body(prompt: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **(extra or {})}


async def post_chat(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> tuple[int, Mapping[str, str], float]:
    """POST one chat completion and read the whole reply: (status, headers, round trip ms)."""
    started = time.perf_counter()
    async with session.post(url, json=body, headers=dict(headers)) as response:
        await response.read()
        return response.status, response.headers, _ms_since(started)


def http_session(connections: int = 256) -> aiohttp.ClientSession:
    """A client session with its own keep-alive pool, for one gateway."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )


def litellm_outcome(status: int, headers: Mapping[str, str], policy: str) -> str:
    """What LiteLLM's cache did, from a reply: a hit carries `x-litellm-cache-key`.

    A reply without one was not looked up when the policy said so (`bypass`),
    else it was a miss (semcache reports a refresh as a miss too).
    """
    if status != 200:
        return "error"
    if "x-litellm-cache-key" in headers:
        return "exact_hit"
    return "bypass" if policy == "bypass" else "miss"


def semcache_http_outcome(status: int, headers: Mapping[str, str]) -> str:
    """What semcache's cache did, from its HTTP door's `x-semcache-cache-status` header."""
    if status != 200:
        return "error"
    return headers.get("x-semcache-cache-status", "other")


def direct_gateway(session: aiohttp.ClientSession, upstream_url: str) -> Gateway:
    """The upstream simulator asked directly (outcome `direct`); the policy changes nothing."""
    url = f"{upstream_url}/chat/completions"

    async def ask(prompt: str, _policy: str) -> Sample:
        status, _, elapsed_ms = await post_chat(session, url, _body(prompt), {})
        return Sample("direct" if status == 200 else "error", elapsed_ms)

    return Gateway("direct to the simulator", None, ask)


def grpc_gateway(
    stub: pb_grpc.SemanticCacheServiceStub, namespace: str, pid: int, name: str
) -> Gateway:
    """semcache's `Complete` RPC in `namespace`, the policy as its `cache_policy`."""

    async def ask(prompt: str, policy: str) -> Sample:
        request = pb.CompleteRequest(
            prompt=prompt, namespace=namespace, cache_policy=GRPC_POLICIES[policy]
        )
        return await call_unary(stub, request)

    return Gateway(name, pid, ask)


def semcache_http_gateway(
    session: aiohttp.ClientSession, base_url: str, namespace: str, pid: int, name: str
) -> Gateway:
    """A semcache HTTP door in `namespace`, the policy as its `x-semcache-cache` header."""
    url = f"{base_url}/chat/completions"

    async def ask(prompt: str, policy: str) -> Sample:
        headers = {"x-semcache-namespace": namespace, "x-semcache-cache": policy}
        status, replied, elapsed_ms = await post_chat(session, url, _body(prompt), headers)
        return Sample(semcache_http_outcome(status, replied), elapsed_ms)

    return Gateway(name, pid, ask)


def litellm_gateway(session: aiohttp.ClientSession, peer: Peer) -> Gateway:
    """The LiteLLM proxy, the policy as the body's `cache` controls."""
    url = f"{peer.base_url}/chat/completions"

    async def ask(prompt: str, policy: str) -> Sample:
        body = _body(prompt, LITELLM_POLICIES[policy])
        status, replied, elapsed_ms = await post_chat(session, url, body, {})
        return Sample(litellm_outcome(status, replied, policy), elapsed_ms)

    return Gateway(peer.label, peer.pid, ask)


def peer_gateway(session: aiohttp.ClientSession, peer: Peer, namespace: str) -> Gateway:
    """The gateway that asks `peer`, by its kind."""
    if peer.kind == "litellm":
        return litellm_gateway(session, peer)
    return semcache_http_gateway(session, peer.base_url, namespace, peer.pid, peer.label)


# --- processes ------------------------------------------------------------------------


def wait_http(
    url: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Block until GET `url` answers 200.

    Raises:
        RuntimeError: `process` ended first (the message has the last lines of `log`).
        TimeoutError: nothing answered within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log else []
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode}:\n" + "\n".join(tail)
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1.0) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s (log: {log})")


def spawn(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `args` with stdout and stderr into `log`."""
    with log.open("wb") as handle:
        return subprocess.Popen(args, env=dict(env), stdout=handle, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(
    args: list[str], env: Mapping[str, str], log: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is ready once `ready_url` answers 200; stopped when the block ends."""
    process = spawn(args, env, log)
    try:
        wait_http(ready_url, START_TIMEOUT_S, process, log)
        yield process
    finally:
        stop(process, timeout_s=STOP_TIMEOUT_S)


def litellm_config(path: Path, upstream_url: str) -> Path:
    """LiteLLM's config.yaml: one model at `upstream_url`, the in-memory cache, no auth."""
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": upstream_url,
                    "api_key": "bench",
                },
            }
        ],
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ensure_peers_venv(venv: Path = PEERS_VENV) -> Path:
    """The `litellm` executable of `venv`, creating the venv and installing LiteLLM if needed.

    Raises:
        subprocess.CalledProcessError: creating the venv or installing LiteLLM failed.
    """
    marker = venv / f".litellm-{LITELLM_VERSION}"
    if not marker.exists():
        from benchmarks.report import progress

        progress(f"peers: installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        marker.touch()
    return venv / "bin" / "litellm"


def litellm_installed(venv: Path = PEERS_VENV) -> bool:
    """Whether `venv` already holds the pinned LiteLLM (nothing is installed by asking)."""
    return (venv / f".litellm-{LITELLM_VERSION}").exists()


def _litellm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_"))}
    # no fetch of the model price map at start (this machine may have no internet)
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING"}


@contextlib.contextmanager
def run_litellm(workdir: Path, upstream_url: str, venv: Path = PEERS_VENV) -> Iterator[Peer]:
    """The LiteLLM proxy on a free port, in front of `upstream_url`, until the block ends.

    Raises:
        subprocess.CalledProcessError: its venv could not be made.
        RuntimeError, TimeoutError: the proxy did not start (see `wait_http`).
    """
    executable = ensure_peers_venv(venv)
    port = free_port()
    config = litellm_config(workdir / "litellm.yaml", upstream_url)
    args = [str(executable), "--config", str(config), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--num_workers", "1"]
    root = f"http://127.0.0.1:{port}"
    ready = f"{root}/health/liveliness"
    with running(args, _litellm_env(), workdir / "litellm.log", ready) as process:
        yield Peer("litellm", f"LiteLLM proxy {LITELLM_VERSION}", f"{root}/v1", process.pid)


def semcache_env(workdir: Path, upstream_url: str, http_port: int) -> dict[str, str]:
    """The environment of a `semcache serve` with its HTTP door, data under `workdir`."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SEMCACHE_GRPC_PORT": str(free_port()),
        "SEMCACHE_HTTP_PORT": str(http_port),
        "SEMCACHE_DATA_DIR": str(workdir / "data"),
        "SEMCACHE_UPSTREAM_BASE_URL": upstream_url,
        "SEMCACHE_LOG_LEVEL": "warning",
    }


@contextlib.contextmanager
def run_semcache_peer(
    workdir: Path, upstream_url: str, extra_env: Mapping[str, str]
) -> Iterator[Peer]:
    """A second `semcache serve` (asked through its HTTP door) standing in for a peer.

    Raises:
        RuntimeError, TimeoutError: it did not start (see `wait_http`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**semcache_env(workdir, upstream_url, port), **extra_env}
    root = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "service.cli", "serve"]
    with running(args, env, workdir / "service.log", f"{root}/v1/models") as process:
        yield Peer("semcache", "peer: a second semcache (HTTP door)", f"{root}/v1", process.pid)


@contextlib.contextmanager
def run_peer(
    kind: str, workdir: Path, upstream_url: str, extra_env: Mapping[str, str]
) -> Iterator[Peer]:
    """The peer `kind` (`litellm` or `semcache`) in front of `upstream_url`.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "litellm":
        with run_litellm(workdir, upstream_url) as peer:
            yield peer
    elif kind == "semcache":
        with run_semcache_peer(workdir / "peer", upstream_url, extra_env) as peer:
            yield peer
    else:
        raise ValueError(f"unknown peer {kind!r}: choose litellm or semcache")


PEER_KINDS = ("litellm", "semcache")
