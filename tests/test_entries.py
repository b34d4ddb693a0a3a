"""Entry handles: every answer names the cache entry it came from or went to, and
DeleteEntry (gRPC, HTTP, thin client) removes that one entry, within the caller's tenant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio

from semcache_client import (
    Answer,
    AsyncSemcacheClient,
    CompleteParams,
    InvalidArgument,
    ItemFailure,
    ResourceExhausted,
    SemcacheClient,
    SemcacheError,
)
from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import load_keys
from service.cli import main
from service.embedding.base import Embedder
from tests.conftest import Service, make_settings, start_service
from tests.httpdoor import (
    ADMIN_KEY,
    CLIENT_KEY,
    OTHER_KEY,
    QUESTION,
    SAME_FORM,
    HttpService,
    ask,
    start_http_service,
    write_keys_file,
)

pytestmark = pytest.mark.asyncio


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest_asyncio.fixture
async def keyed(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    """Both doors with API keys: CLIENT_KEY (acme), OTHER_KEY (globex), ADMIN_KEY (ops)."""
    keys = load_keys(write_keys_file(tmp_path / "keys.yaml"))
    running = await start_http_service(embedder, simulator, tmp_path / "data", keys)
    yield running
    await running.close()


async def _complete(
    service: Service, prompt: str, key: str = CLIENT_KEY, **fields: object
) -> pb.CompleteResponse:
    request = pb.CompleteRequest(prompt=prompt, model="gpt-4o-mini", **fields)  # type: ignore[arg-type]
    response: pb.CompleteResponse = await service.stub.Complete(request, metadata=_bearer(key))
    return response


async def _delete(service: Service, entry_id: str, key: str = CLIENT_KEY) -> bool:
    request = pb.DeleteEntryRequest(entry_id=entry_id)
    response = await service.stub.DeleteEntry(request, metadata=_bearer(key))
    return bool(response.deleted)


async def test_a_stored_miss_and_its_hits_carry_the_same_entry_id(service: Service) -> None:
    miss = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    exact = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    semantic = await service.stub.Complete(pb.CompleteRequest(prompt=SAME_FORM))
    assert miss.cache_status == pb.CACHE_STATUS_MISS
    assert exact.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert semantic.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
    assert miss.entry_id
    assert exact.entry_id == miss.entry_id == semantic.entry_id


@pytest.mark.parametrize(
    "policy", [pb.CACHE_POLICY_BYPASS, pb.CACHE_POLICY_NO_STORE], ids=["bypass", "no_store"]
)
async def test_nothing_stored_means_no_entry_id(service: Service, policy: int) -> None:
    response = await service.stub.Complete(
        pb.CompleteRequest(prompt=QUESTION, cache_policy=policy)  # type: ignore[arg-type]
    )
    assert response.entry_id == ""


async def test_a_stream_final_message_carries_the_entry_id(service: Service) -> None:
    events = [e async for e in service.stub.StreamComplete(pb.CompleteRequest(prompt=QUESTION))]
    streamed = events[-1].final.entry_id
    hit = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    assert hit.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert streamed and hit.entry_id == streamed


async def test_delete_entry_removes_that_entry_only(service: Service) -> None:
    first = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    other = await service.stub.Complete(pb.CompleteRequest(prompt="Name three prime numbers"))
    deleted = await service.stub.DeleteEntry(pb.DeleteEntryRequest(entry_id=first.entry_id))
    again = await service.stub.DeleteEntry(pb.DeleteEntryRequest(entry_id=first.entry_id))
    assert deleted.deleted and not again.deleted
    after = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    kept = await service.stub.Complete(pb.CompleteRequest(prompt="Name three prime numbers"))
    assert after.cache_status == pb.CACHE_STATUS_MISS
    assert kept.cache_status == pb.CACHE_STATUS_EXACT_HIT and kept.entry_id == other.entry_id


async def test_a_malformed_entry_id_is_invalid_argument(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.DeleteEntry(pb.DeleteEntryRequest(entry_id="not-an-id"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "entry_id" in (caught.value.details() or "")


async def test_another_tenants_entry_looks_missing_and_survives(keyed: HttpService) -> None:
    service = keyed.grpc
    acme = await _complete(service, QUESTION)
    assert not await _delete(service, acme.entry_id, key=OTHER_KEY)
    still = await _complete(service, QUESTION)
    assert still.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert await _delete(service, acme.entry_id, key=CLIENT_KEY)


async def test_an_admin_deletes_any_tenants_entry(keyed: HttpService) -> None:
    service = keyed.grpc
    acme = await _complete(service, QUESTION)
    assert await _delete(service, acme.entry_id, key=ADMIN_KEY)
    again = await _complete(service, QUESTION)
    assert again.cache_status == pb.CACHE_STATUS_MISS


async def test_http_door_names_the_entry_and_deletes_it(keyed: HttpService) -> None:
    client = keyed.async_client(CLIENT_KEY)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ask(QUESTION)
    )  # type: ignore[call-overload]
    body = raw.http_response.json()
    entry_id = raw.headers["x-semcache-entry-id"]
    assert entry_id and body["semcache"]["entry_id"] == entry_id
    url = f"{keyed.root_url}/v1/semcache/entries/{entry_id}"
    async with aiohttp.ClientSession() as session:
        async with session.delete(url, headers={"authorization": f"Bearer {OTHER_KEY}"}) as r:
            assert (r.status, (await r.json())["deleted"]) == (200, False)
        async with session.delete(url, headers={"authorization": f"Bearer {CLIENT_KEY}"}) as r:
            assert (r.status, await r.json()) == (200, {"entry_id": entry_id, "deleted": True})
        async with session.delete(url.replace(entry_id, "nope"), headers=_auth(CLIENT_KEY)) as r:
            assert r.status == 400
    await client.close()


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_thin_client_reads_entry_id_and_deletes(service: Service) -> None:
    target = f"127.0.0.1:{service.server.port}"
    async with AsyncSemcacheClient(target) as client:
        answer = await client.complete(QUESTION)
        assert answer.entry_id
        assert await client.delete_entry(answer.entry_id)
        assert not await client.delete_entry(answer.entry_id)
        with pytest.raises(InvalidArgument):
            await client.delete_entry("x")


async def test_sync_client_deletes_an_entry(service: Service) -> None:
    target = f"127.0.0.1:{service.server.port}"

    def run() -> tuple[str, bool, bool]:
        with SemcacheClient(target) as client:
            entry_id = client.complete(QUESTION).entry_id
            return entry_id, client.delete_entry(entry_id), client.delete_entry(entry_id)

    entry_id, first, second = await asyncio.to_thread(run)
    assert entry_id and first and not second


# --- warm-up: PutEntries ----------------------------------------------------------

FAQ_ANSWER = "Machine learning is software that learns patterns from data."


async def test_seeded_entry_is_an_exact_and_a_semantic_hit(service: Service) -> None:
    put = await service.stub.PutEntries(
        pb.PutEntriesRequest(entries=[pb.Entry(question=QUESTION, answer=FAQ_ANSWER)])
    )
    entry_id = put.results[0].entry_id
    exact = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    semantic = await service.stub.Complete(pb.CompleteRequest(prompt=SAME_FORM))
    assert (exact.cache_status, exact.content) == (pb.CACHE_STATUS_EXACT_HIT, FAQ_ANSWER)
    assert (semantic.cache_status, semantic.content) == (pb.CACHE_STATUS_SEMANTIC_HIT, FAQ_ANSWER)
    assert entry_id and exact.entry_id == semantic.entry_id == entry_id
    assert service.simulator.request_count() == 0


async def test_seeded_entries_keep_to_their_scope(service: Service) -> None:
    await service.stub.PutEntries(
        pb.PutEntriesRequest(
            entries=[pb.Entry(question=QUESTION, answer=FAQ_ANSWER)],
            model="gpt-4o-mini",
            namespace="faq",
        )
    )
    auto = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION, namespace="faq"))
    wrong_ns = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION, model="gpt-4o-mini"))
    scoped = await service.stub.Complete(
        pb.CompleteRequest(prompt=QUESTION, model="gpt-4o-mini", namespace="faq")
    )
    assert auto.cache_status == wrong_ns.cache_status == pb.CACHE_STATUS_MISS
    assert (scoped.cache_status, scoped.content) == (pb.CACHE_STATUS_EXACT_HIT, FAQ_ANSWER)


async def test_a_bad_entry_fails_alone_with_its_index(service: Service) -> None:
    put = await service.stub.PutEntries(
        pb.PutEntriesRequest(
            entries=[
                pb.Entry(question=QUESTION, answer=FAQ_ANSWER),
                pb.Entry(question="", answer="no question"),
                pb.Entry(question="Name three prime numbers", answer=" "),
            ]
        )
    )
    first, second, third = put.results
    assert first.entry_id
    assert second.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert second.status.message.startswith("entries[1]")
    assert third.status.message.startswith("entries[2]") and "answer" in third.status.message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ttl_s": 0}, "ttl_s"),
        ({"namespace": "x y"}, "namespace"),
        ({"temperature": 3.0}, "temperature"),
        ({"system_prompt": "s" * 40_000}, "system prompt"),
    ],
)
async def test_a_bad_field_of_the_call_fails_the_call_and_no_entries_is_refused(
    service: Service, fields: dict[str, object], named: str
) -> None:
    """The call's own fields fail the call once (they failed every entry alike, each with
    status OK for the call, found by an audit)."""
    entries = [pb.Entry(question=QUESTION, answer="a"), pb.Entry(question="Other?", answer="b")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutEntries(pb.PutEntriesRequest(entries=entries, **fields))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in (caught.value.details() or "")
    assert not (caught.value.details() or "").startswith("entries[")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutEntries(pb.PutEntriesRequest())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_the_same_question_twice_in_one_call_is_refused_for_the_second(
    service: Service,
) -> None:
    """Both once got the same entry id, and whichever was written last silently won."""
    put = await service.stub.PutEntries(
        pb.PutEntriesRequest(
            entries=[
                pb.Entry(question=QUESTION, answer="first"),
                pb.Entry(question=f"  {QUESTION.lower()}  ", answer="second"),
            ]
        )
    )
    first, second = put.results
    assert first.entry_id
    assert second.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert second.status.message.startswith("entries[1]") and "entries[0]" in second.status.message
    exact = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    assert exact.content == "first"


async def test_a_refused_entry_claims_no_question_for_a_later_one(service: Service) -> None:
    """Found from outside: an entry refused for its own fault (an empty answer) still
    took its question, so a later, valid answer to it was refused as its repeat."""
    put = await service.stub.PutEntries(
        pb.PutEntriesRequest(
            entries=[
                pb.Entry(question=QUESTION, answer="   "),
                pb.Entry(question=QUESTION, answer=FAQ_ANSWER),
            ]
        )
    )
    refused, stored = put.results
    assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "answer is empty" in refused.status.message
    assert stored.entry_id, stored.status.message
    exact = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    assert exact.content == FAQ_ANSWER


async def test_entries_for_requests_too_hot_to_cache_are_refused(service: Service) -> None:
    """Found from outside: temperature 1.5 (above SEMCACHE_MAX_CACHEABLE_TEMPERATURE) got
    an entry id for an entry no request could ever be served from."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutEntries(
            pb.PutEntriesRequest(
                entries=[pb.Entry(question=QUESTION, answer=FAQ_ANSWER)], temperature=1.5
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SEMCACHE_MAX_CACHEABLE_TEMPERATURE" in (caught.value.details() or "")


async def test_a_client_key_seeds_only_its_own_tenant(keyed: HttpService) -> None:
    service = keyed.grpc
    request = pb.PutEntriesRequest(
        entries=[pb.Entry(question=QUESTION, answer=FAQ_ANSWER)], model="gpt-4o-mini"
    )
    await service.stub.PutEntries(request, metadata=_bearer(CLIENT_KEY))
    other = await _complete(service, QUESTION, key=OTHER_KEY)
    own = await _complete(service, QUESTION, key=CLIENT_KEY)
    assert other.cache_status == pb.CACHE_STATUS_MISS
    assert (own.cache_status, own.content) == (pb.CACHE_STATUS_EXACT_HIT, FAQ_ANSWER)


async def test_http_door_seeds_entries(keyed: HttpService) -> None:
    body = {
        "entries": [{"question": QUESTION, "answer": FAQ_ANSWER}, {"question": "", "answer": "x"}],
        "namespace": "faq",
        "ttl_s": 3600,
        "model": "gpt-4o-mini",
    }
    url = f"{keyed.root_url}/v1/semcache/entries"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=_auth(CLIENT_KEY)) as r:
            assert r.status == 200
            ok, bad = (await r.json())["results"]
        async with session.post(url, json={"entries": "x"}, headers=_auth(CLIENT_KEY)) as r:
            assert r.status == 400
    assert ok["entry_id"] and bad["error"]["status"] == 400
    assert bad["error"]["message"].startswith("entries[1]")
    client = keyed.async_client(CLIENT_KEY)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ask(SAME_FORM), extra_body={"semcache": {"namespace": "faq"}}
    )  # type: ignore[call-overload]
    await client.close()
    assert raw.headers["x-semcache-cache-status"] == "semantic_hit"
    assert raw.headers["x-semcache-entry-id"] == ok["entry_id"]


async def test_thin_client_puts_entries(service: Service) -> None:
    target = f"127.0.0.1:{service.server.port}"
    async with AsyncSemcacheClient(target) as client:
        results = await client.put_entries([(QUESTION, FAQ_ANSWER), ("", "x")], namespace="faq")
        hit = await client.complete(SAME_FORM, namespace="faq")
    entry_id, failure = results
    assert isinstance(failure, ItemFailure) and failure.index == 1
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert hit.is_hit and hit.entry_id == entry_id and hit.content == FAQ_ANSWER


# --- semcache import FILE.jsonl ---------------------------------------------------


async def _import(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["import", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_cli_import_seeds_a_jsonl_file(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = [
        json.dumps({"question": QUESTION, "answer": FAQ_ANSWER}),
        "",
        json.dumps({"question": "How do I reset my password?", "answer": "Use the reset link."}),
        json.dumps({"question": "", "answer": "no question"}),
    ]
    faq = tmp_path / "faq.jsonl"
    faq.write_text("\n".join(lines) + "\n")
    target = f"127.0.0.1:{service.server.port}"
    status, out, err = await _import(
        capsys, str(faq), "--namespace", "faq", "--batch-size", "2", "--target", target
    )
    assert status == 1  # one line was refused
    assert out.strip() == "stored 2 entries, 1 failed"
    # Found from outside: "imported 3/3 entries (1 failed)" read as if all were stored.
    assert "3/3 lines: 2 stored, 1 failed" in err and "line 4: INVALID_ARGUMENT" in err
    # Found from outside: the message said "entries[1]", the item's index in its call.
    assert "entries[" not in err
    assert "\n\n" not in err.replace("\r", "")
    hit = await service.stub.Complete(pb.CompleteRequest(prompt=SAME_FORM, namespace="faq"))
    assert (hit.cache_status, hit.content) == (pb.CACHE_STATUS_SEMANTIC_HIT, FAQ_ANSWER)
    # Importing it again (as a cut-off import's message advises) replaces, never adds.
    await _import(capsys, str(faq), "--namespace", "faq", "--target", target)
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(namespace="faq"))
    assert stats.entries == 2


@pytest.mark.parametrize("batch_size", ["1", "100"])
async def test_cli_import_keeps_the_first_answer_to_a_repeated_question_whatever_the_batches(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path, batch_size: str
) -> None:
    """Found from outside: a question repeated in another batch silently replaced the
    earlier answer, and in the same batch was refused, so which answer stayed
    depended on --batch-size."""
    lines = [
        json.dumps({"question": "What is the refund window?", "answer": "FIRST: 30 days"}),
        json.dumps({"question": "What is the bonus policy?", "answer": "none"}),
        json.dumps({"question": "what is the refund window", "answer": "SECOND: 7 days"}),
    ]
    faq = tmp_path / "faq.jsonl"
    faq.write_text("\n".join(lines) + "\n")
    namespace = f"dup{batch_size}"
    target = f"127.0.0.1:{service.server.port}"
    status, out, err = await _import(
        capsys, str(faq), "--namespace", namespace, "--batch-size", batch_size, "--target", target
    )
    assert status == 1
    assert out.strip() == "stored 2 entries, 1 failed"
    assert "line 3: the same question as line 1" in err
    assert "3/3 lines: 2 stored, 1 failed" in err, "the repeat counts among the file's lines"
    hit = await service.stub.Complete(
        pb.CompleteRequest(prompt="What is the refund window?", namespace=namespace)
    )
    assert (hit.cache_status, hit.content) == (pb.CACHE_STATUS_EXACT_HIT, "FIRST: 30 days")


async def test_cli_import_refuses_a_field_a_line_does_not_hold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found from outside: {"namespace": "other", "ttl_s": 5} on a line was dropped, and
    the entry stored in the default namespace for the default TTL."""
    faq = tmp_path / "faq.jsonl"
    faq.write_text('{"question": "q", "answer": "a", "namespace": "other", "ttl_s": 5}\n')
    status, _, err = await _import(capsys, str(faq), "--target", "127.0.0.1:1")
    assert status == 2
    assert f"{faq}:1: 'namespace' is not a field of a line" in err and "--namespace" in err


async def test_cli_import_names_a_bad_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    faq = tmp_path / "faq.jsonl"
    faq.write_text('{"question": "q", "answer": "a"}\n{"question": 1}\n')
    status, _, err = await _import(capsys, str(faq), "--target", "127.0.0.1:1")
    assert status == 2
    assert f"{faq}:2" in err


# --- batch item errors are google.rpc.Status ---------------------------------------


async def test_a_rate_limited_batch_item_carries_retry_info(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    settings = make_settings(
        "edge", tmp_path / "data", simulator.base_url, rate_limit_requests_per_minute=1
    )
    running = await start_service(embedder, simulator, settings)
    try:
        target = f"127.0.0.1:{running.server.port}"
        async with AsyncSemcacheClient(target) as client:
            first, second = await client.batch_complete(
                [CompleteParams(prompt=QUESTION), CompleteParams(prompt=SAME_FORM)],
                max_concurrency=1,
            )
    finally:
        await running.close()
    assert isinstance(first, Answer) and isinstance(second, ItemFailure)
    assert second.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert second.retry_after_s is not None and second.retry_after_s > 0
    error = second.error()
    assert isinstance(error, ResourceExhausted) and error.retry_after_s == second.retry_after_s


async def test_an_import_batch_over_the_services_limit_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: --batch-size 5000 sent a call the service refuses whole
    ("1001 entries is more than the limit of 1000"), after reading the file."""
    from service.cli import main

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "q", "answer": "a"}\n')
    argv = ["import", str(seeds), "--batch-size", "5000", "--target", "127.0.0.1:1"]
    assert await asyncio.to_thread(main, argv) == 2
    assert "use 1 to 1000" in capsys.readouterr().err


class _DropsAfterOneCall:
    """A client whose second PutEntries finds the service gone."""

    def __init__(self) -> None:
        self.calls = 0

    def put_entries(self, pairs: list[tuple[str, str]], **scope: object) -> list[str]:
        self.calls += 1
        if self.calls > 1:
            raise SemcacheError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        return [f"id-{question}" for question, _ in pairs]


async def test_an_import_cut_off_says_what_was_stored_and_that_running_it_again_is_safe() -> None:
    """Found from outside: a service killed mid-import left only gRPC's own words, not
    how far the import got or whether running it again would duplicate entries."""
    from io import StringIO

    from service.seed_import import Line, import_lines

    lines = [Line(n, (f"question {n}?", f"answer {n}")) for n in range(1, 6)]
    scope = {"namespace": "", "ttl_s": None, "model": ""}
    with pytest.raises(SemcacheError) as raised:
        import_lines(_DropsAfterOneCall(), lines, 2, scope, StringIO())  # type: ignore[arg-type]
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    details = raised.value.details
    assert details.startswith("failed to connect to all addresses; ")
    assert "lines before line 3 were sent (2 stored, 0 failed)" in details
    assert "importing the file again is safe" in details


async def test_an_import_that_stored_nothing_before_failing_says_so() -> None:
    from io import StringIO

    from service.seed_import import Line, import_lines

    client = _DropsAfterOneCall()
    client.calls = 1  # the first call already fails
    scope = {"namespace": "", "ttl_s": None, "model": ""}
    with pytest.raises(SemcacheError) as raised:
        import_lines(client, [Line(1, ("q?", "a"))], 2, scope, StringIO())  # type: ignore[arg-type]
    assert raised.value.details == "failed to connect to all addresses; nothing was stored"


async def test_cli_import_of_one_line_says_one_entry(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    faq = tmp_path / "one.jsonl"
    faq.write_text(json.dumps({"question": "What is the refund window?", "answer": "30 days"}))
    target = f"127.0.0.1:{service.server.port}"
    status, out, _ = await _import(capsys, str(faq), "--namespace", "one", "--target", target)
    assert (status, out.strip()) == (0, "stored 1 entry, 0 failed")
