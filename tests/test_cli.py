"""`semcache complete` sends every field a request has, by the field's own name;
the client commands find the service through SEMCACHE_TARGET; a bad setting is
one line, never a traceback; `serve --help` says where settings come from."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from semcache_simulator import UpstreamSimulator
from service.cli import main
from service.embedding.base import Embedder
from service.transport.grpc.auth import load_server_credentials
from service.transport.grpc.server import Security
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"
# An everyday form of QUESTION: served at once ("same_form") by the default error-budget
# decision, yet found by the vector search, so a semantic hit.
PARAPHRASE = "Can you explain machine learning?"


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`semcache ARGV` in a thread (the CLI is sync): status, stdout, stderr."""
    status = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def _cache(capsys: pytest.CaptureFixture[str], service: Service, *argv: str) -> str:
    """What the cache did for `semcache complete ARGV`: miss, exact_hit, semantic_hit..."""
    target = f"127.0.0.1:{service.server.port}"
    status, _, err = await _run(capsys, "complete", *argv, "--target", target)
    assert status == 0, err
    line = err.strip().splitlines()[-1]
    return line.split()[1].removeprefix("cache=")


async def test_the_system_prompt_and_earlier_turns_reach_the_service(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    french = ("--system", "Answer in French.")
    assert await _cache(capsys, service, QUESTION, *french) == "miss"
    assert await _cache(capsys, service, QUESTION, *french) == "exact_hit"
    assert await _cache(capsys, service, QUESTION, "--system", "Answer in German.") == "miss"
    turns = ("--message", "user:Name a pasta dish.", "--message", "assistant:Carbonara.")
    assert await _cache(capsys, service, QUESTION, *french, *turns) == "miss"
    assert await _cache(capsys, service, QUESTION, *french, *turns, "--stream") == "exact_hit"


async def test_top_p_is_part_of_the_request(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cache(capsys, service, QUESTION) == "miss"
    assert await _cache(capsys, service, QUESTION) == "exact_hit"
    assert await _cache(capsys, service, QUESTION, "--top-p", "0.5") == "miss"


async def test_similarity_min_and_cache_policy_reach_the_service(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cache(capsys, service, QUESTION) == "miss"
    strict = ("--similarity-min", "0.999", "--cache-policy", "no-store")
    assert await _cache(capsys, service, PARAPHRASE, *strict) == "miss"
    assert await _cache(capsys, service, PARAPHRASE) == "semantic_hit"
    assert await _cache(capsys, service, PARAPHRASE, "--policy", "bypass") == "bypass"


async def test_ttl_s_reaches_the_service(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cache(capsys, service, QUESTION, "--ttl-s", "60") == "miss"
    target = f"127.0.0.1:{service.server.port}"
    status, _, err = await _run(
        capsys, "complete", QUESTION, "--ttl-s", "99999999", "--target", target
    )
    assert status == 1
    assert err.strip() == (
        "semcache: INVALID_ARGUMENT: ttl_s is 99999999; use 1 to 2592000 seconds, or leave it unset"
    )


def test_a_message_flag_names_its_role(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["complete", "hi", "--message", "robot:beep", "--target", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert "ROLE one of system, user, assistant" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["complete", QUESTION], ["stats"]])
async def test_semcache_target_spares_the_flag(
    service: Service,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    monkeypatch.setenv("SEMCACHE_TARGET", f"127.0.0.1:{service.server.port}")
    status, out, err = await _run(capsys, *command)
    assert status == 0, err
    assert out.strip()


@pytest.mark.parametrize(
    "command",
    [
        ["complete", QUESTION],
        ["stats"],
        ["invalidate", "--all"],
        ["route-eval", "x.jsonl"],
        ["bench", "compare"],  # a benchmark that builds Settings() itself
    ],
)
def test_a_bad_setting_is_one_line_and_status_1(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMCACHE_GRPC_PORT", "fifty")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"semcache {command[0]}: invalid settings: SEMCACHE_GRPC_PORT='fifty'")


def test_serve_help_says_where_settings_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for needed in ("SEMCACHE_<SETTING>", "SEMCACHE_CATALOGUE_PATH", "SEMCACHE_API_KEYS_FILE"):
        assert needed in help_text
    assert "README's Configuration table" in help_text and "No .env file" in help_text


def test_complete_help_names_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["complete", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--cache-policy", "--top-p", "--ttl-s", "--similarity-min", "--system"):
        assert flag in help_text
    assert "--policy" not in help_text.replace("--cache-policy", "")


def test_serve_shortens_the_gil_switch_interval_unless_told_not_to() -> None:
    """`semcache serve` hands the GIL back to the embedding thread within
    SEMCACHE_SWITCH_INTERVAL_MS (issue 13); 0 leaves Python's own."""
    from service.cli import apply_switch_interval
    from service.config import Settings

    original = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        apply_switch_interval(Settings(switch_interval_ms=0))
        assert sys.getswitchinterval() == pytest.approx(0.005)
        apply_switch_interval(Settings())
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(original)


def test_serve_freezes_what_start_up_built_out_of_the_garbage_collectors_reach() -> None:
    """A full collection must not walk the model and modules every time (30-40 ms
    with the service paused): `semcache serve` freezes them once built."""
    import gc

    from service.cli import freeze_startup_objects

    assert gc.get_freeze_count() == 0
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def test_client_commands_call_a_tls_server_with_tls_ca(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    tmp_path: Path,
    tls_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = tls_files
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    credentials = load_server_credentials(cert, key)
    tls = await start_service(embedder, simulator, settings, Security(None, credentials))
    target = ["--target", f"localhost:{tls.server.port}", "--timeout-s", "5"]
    try:
        status, out, err = await _run(capsys, "stats", *target, "--tls-ca", str(cert))
        assert status == 0, err
        assert "default" in out
        status, _, err = await _run(capsys, "stats", *target)
        assert status == 1, "plaintext to a TLS port"
        assert "pass --tls-ca" in err  # found from outside: "Socket closed", no hint
        status, _, err = await _run(capsys, "stats", *target, "--tls-ca", str(tmp_path / "none"))
        assert status == 1 and "--tls-ca" in err and err.count("\n") == 1
        not_pem = tmp_path / "not.pem"
        not_pem.write_text("hello")
        status, _, err = await _run(capsys, "stats", *target, "--tls-ca", str(not_pem))
        assert status == 1 and "hold no PEM certificate" in err and err.count("\n") == 1
    finally:
        await tls.close()


def test_ctrl_c_while_the_cli_loads_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing the CLI takes most of a second; Ctrl-C then printed a traceback (found by
    an audit). The console script's own module catches it."""
    import types

    from service import entry

    class Loading(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "service.cli", Loading("service.cli"))
    assert entry.main() == 130
    assert capsys.readouterr().err == "semcache: interrupted\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["complete", "hi", "--target", "localhost:99999"], "port must be a number from 1"),
        (["health", "--target", "localhost:99999"], "port must be a number from 1"),
        (["stats", "--target", "localhost"], "give it as HOST:PORT"),
        (["health", "--timeout-s", "0"], "give a number of seconds above 0"),
        (["complete", "hi", "--timeout-s", "-1", "--target", "localhost:1"], "above 0"),
    ],
)
def test_a_target_or_timeout_that_cannot_be_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: gRPC took port 99999 as 34463 and called whatever listened
    there; `health --timeout-s 0` failed as DEADLINE_EXCEEDED."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_target_setting_that_cannot_be_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMCACHE_TARGET", "localhost:99999")
    assert main(["stats"]) == 1
    assert "SEMCACHE_TARGET='localhost:99999' is invalid" in capsys.readouterr().err


def test_tenant_with_an_api_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Found from outside: the server takes the key's tenant, so `invalidate --all
    --tenant other --api-key KEY` emptied the key's own tenant, not `other`."""
    argv = ["invalidate", "--all", "--tenant", "other", "--api-key", "k", "--target", "h:1"]
    assert main(argv) == 2
    assert "--tenant is for open mode" in capsys.readouterr().err


def test_ctrl_c_while_the_arguments_are_parsed_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import service.cli as cli

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["complete", "hi"]) == 130
    assert capsys.readouterr().err == "semcache complete: interrupted\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--fault", "nomodel:error_rate=0.1"], "faults name unknown models"),
        (["--ttft-ms", "-5"], "ttft_ms must be a finite number"),
        (["--ms-per-token", "nan"], "ms_per_token must be a finite number"),
    ],
)
def test_a_simulator_argument_it_refuses_is_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: these were tracebacks, where other bad --fault values were
    one line with status 2."""
    assert main(["simulate-upstream", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_a_negative_token_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Found from outside: --output-tokens -5 was taken, and routing "saved -5.9%"."""
    with pytest.raises(SystemExit) as exited:
        main(["route-eval", "x.jsonl", "--output-tokens", "-5"])
    assert exited.value.code == 2
    assert "not a number of tokens" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["SEMCACHE_EMBEDDING_THREADS", "SEMCACHE_STORE_SEARCH_THREADS"])
def test_a_thread_count_past_its_bound_is_one_line(
    setting: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: 100000 threads hung start-up."""
    monkeypatch.setenv(setting, "100000")
    assert main(["stats"]) == 1
    assert f"{setting}='100000' is invalid" in capsys.readouterr().err


def test_health_says_why_for_a_service_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: `health --service nope` printed "NOT_FOUND: " and no reason."""
    import grpc

    from service.transport.grpc import healthcheck

    class NotFound(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

        def details(self) -> str:
            return ""

    assert healthcheck._reason(NotFound(), "nope").endswith("no health for service 'nope'")


def test_an_error_after_ctrl_c_is_still_one_interrupted_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in a full test run: Ctrl-C stopped the service a benchmark had started as
    well, whose refusal of the next call came back as an error before the interrupt did,
    and the command ended with a traceback and status 1."""
    import os
    import signal
    import time

    import service.cli as cli

    def interrupted_then_failed(args: object) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass  # swallowed below us, as a library's wait may
        raise RuntimeError("UNAVAILABLE: the service went away")

    monkeypatch.setattr(cli, "_cmd_stats", interrupted_then_failed)
    monkeypatch.setenv("SEMCACHE_TARGET", "127.0.0.1:1")
    assert main(["stats"]) == 130
    assert capsys.readouterr().err == "semcache stats: interrupted\n"


def test_a_client_command_without_the_client_package_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: in an image without semcache-client, `semcache stats` was a
    ModuleNotFoundError traceback."""
    for name in [
        m for m in sys.modules if m == "semcache_client" or m.startswith("semcache_client.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "semcache_client", None)  # import fails as if absent

    status = main(["stats", "--target", "127.0.0.1:1"])

    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "semcache stats: this command needs the Python client, semcache-client:"
        " pip install ./clients/python (or `make install`)"
    ]
