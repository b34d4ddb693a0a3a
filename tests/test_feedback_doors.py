"""Verified hits through every door, end to end: a request's max_error_rate tightens the
budget, a semantic hit reports its error probability, SubmitFeedback (gRPC, HTTP, the
thin client, `semcache feedback`) records a verdict on an answer, a "wrong" stops its
entry from serving that paraphrase again, and GetCacheStats shows the rows.

Exploration and audits are off (`exploration_share=0`, `audit_share=0`) so that every
servable candidate is served and the tests are deterministic; the service's budget is
the loosest it takes (`max_error_rate=0.5`), so that PARAPHRASE is servable whatever
the shipped prior makes of it, and a request can tighten it."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from semcache_client import AsyncSemcacheClient, NotFound, SemcacheClient
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
    PARAPHRASE,
    QUESTION,
    HttpService,
    ask,
    start_http_service,
    write_keys_file,
)

pytestmark = pytest.mark.asyncio

NO_EXPLORATION: dict[str, Any] = {
    "exploration_share": 0.0,
    "audit_share": 0.0,
    "max_error_rate": 0.5,
}
OTHER_QUESTION = "Name three prime numbers"


@pytest_asyncio.fixture
async def verified(
    embedder: Embedder, simulator: UpstreamSimulator, backend: str, tmp_path: Path
) -> AsyncIterator[Service]:
    """The gRPC service in open mode on each store backend, exploration off."""
    settings = make_settings(backend, tmp_path / "data", simulator.base_url, **NO_EXPLORATION)
    running = await start_service(embedder, simulator, settings)
    yield running
    await running.close()


@pytest_asyncio.fixture
async def keyed(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    """Both doors with keys: CLIENT_KEY (acme), OTHER_KEY (globex), ADMIN_KEY (ops)."""
    keys = load_keys(write_keys_file(tmp_path / "keys.yaml"))
    running = await start_http_service(
        embedder, simulator, tmp_path / "data", keys, **NO_EXPLORATION
    )
    yield running
    await running.close()


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _complete(
    service: Service, prompt: str, key: str | None = None, **fields: Any
) -> pb.CompleteResponse:
    metadata = _bearer(key) if key else ()
    request = pb.CompleteRequest(prompt=prompt, **fields)
    response: pb.CompleteResponse = await service.stub.Complete(request, metadata=metadata)
    return response


async def _feedback(
    service: Service, key: str | None = None, **fields: Any
) -> pb.SubmitFeedbackResponse:
    metadata = _bearer(key) if key else ()
    request = pb.SubmitFeedbackRequest(**fields)
    response: pb.SubmitFeedbackResponse = await service.stub.SubmitFeedback(
        request, metadata=metadata
    )
    return response


async def _refused(service: Service, key: str | None = None, **fields: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _feedback(service, key, **fields)
    code: grpc.StatusCode = caught.value.code()
    return code


async def _hit(service: Service, key: str | None = None) -> tuple[str, pb.CompleteResponse]:
    """QUESTION stored (its entry id), then PARAPHRASE served from it as a semantic hit."""
    stored = await _complete(service, QUESTION, key)
    semantic = await _complete(service, PARAPHRASE, key)
    assert stored.cache_status == pb.CACHE_STATUS_MISS and stored.entry_id
    assert semantic.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT, semantic.cache_detail
    assert semantic.entry_id == stored.entry_id
    return stored.entry_id, semantic


def _served_from(response: pb.CompleteResponse, entry_id: str) -> bool:
    return response.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT and response.entry_id == entry_id


# --- gRPC ---------------------------------------------------------------------------


async def test_a_semantic_hit_reports_its_error_probability_and_others_zero(
    verified: Service,
) -> None:
    _, semantic = await _hit(verified)
    assert 0.0 < semantic.error_probability <= verified.settings.max_error_rate
    exact = await _complete(verified, QUESTION)
    assert exact.cache_status == pb.CACHE_STATUS_EXACT_HIT and exact.error_probability == 0.0
    fresh = await _complete(verified, OTHER_QUESTION)
    assert fresh.cache_status == pb.CACHE_STATUS_MISS and fresh.error_probability == 0.0


async def test_max_error_rate_below_a_hits_probability_sends_it_upstream(
    verified: Service,
) -> None:
    entry_id, semantic = await _hit(verified)
    strict = await _complete(
        verified,
        PARAPHRASE,
        max_error_rate=semantic.error_probability / 2,
        cache_policy=pb.CACHE_POLICY_NO_STORE,
    )
    assert strict.cache_status == pb.CACHE_STATUS_MISS
    loose = await _complete(verified, PARAPHRASE, max_error_rate=1.0)
    assert _served_from(loose, entry_id)
    assert loose.error_probability == pytest.approx(semantic.error_probability, abs=1e-6)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
async def test_max_error_rate_outside_0_to_1_is_invalid_argument(
    verified: Service, value: float
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _complete(verified, QUESTION, max_error_rate=value)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("max_error_rate is")


async def test_wrong_feedback_on_a_served_hit_stops_that_entry_serving_it(
    verified: Service,
) -> None:
    entry_id, semantic = await _hit(verified)
    receipt = await _feedback(
        verified, request_id=semantic.request_id, verdict=pb.FEEDBACK_VERDICT_WRONG
    )
    assert receipt.entry_id == entry_id and 0.0 < receipt.score < 1.0
    again = await _complete(verified, PARAPHRASE, cache_policy=pb.CACHE_POLICY_NO_STORE)
    assert not _served_from(again, entry_id)
    assert again.cache_status == pb.CACHE_STATUS_MISS
    stats = await verified.stub.GetCacheStats(pb.GetCacheStatsRequest())
    (row,) = stats.verification
    assert row.namespace == "default" and row.feedback_wrong == 1 and row.feedback_correct == 0
    assert row.semantic_served == 1 and row.requests >= 3
    assert row.expected_error_rate > 0.0
    assert row.audited_error_rate_low <= row.audited_error_rate <= row.audited_error_rate_high


async def test_a_streamed_hit_is_judged_by_its_request_id(verified: Service) -> None:
    stored = await _complete(verified, QUESTION)
    events = [e async for e in verified.stub.StreamComplete(pb.CompleteRequest(prompt=PARAPHRASE))]
    final = events[-1].final
    assert final.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT and final.error_probability > 0
    receipt = await _feedback(
        verified, request_id=final.request_id, verdict=pb.FEEDBACK_VERDICT_CORRECT
    )
    assert receipt.entry_id == stored.entry_id
    again = await _complete(verified, PARAPHRASE)
    assert _served_from(again, stored.entry_id)


async def test_correct_feedback_by_entry_id_keeps_the_entry_and_is_counted(
    verified: Service,
) -> None:
    stored = await _complete(verified, QUESTION)
    receipt = await _feedback(
        verified, entry_id=stored.entry_id, verdict=pb.FEEDBACK_VERDICT_CORRECT
    )
    assert (receipt.entry_id, receipt.score) == (stored.entry_id, 1.0)
    exact = await _complete(verified, QUESTION)
    assert exact.cache_status == pb.CACHE_STATUS_EXACT_HIT
    stats = await verified.stub.GetCacheStats(pb.GetCacheStatsRequest(namespace="default"))
    assert [(r.namespace, r.feedback_correct) for r in stats.verification] == [("default", 1)]
    other = await verified.stub.GetCacheStats(pb.GetCacheStatsRequest(namespace="elsewhere"))
    assert list(other.verification) == []


async def test_each_batch_item_answers_feedback_by_its_own_request_id(
    verified: Service,
) -> None:
    batch = await verified.stub.BatchComplete(
        pb.BatchCompleteRequest(
            requests=[
                pb.CompleteRequest(prompt=QUESTION),
                pb.CompleteRequest(prompt=OTHER_QUESTION),
            ]
        )
    )
    first, second = (result.response for result in batch.results)
    assert first.request_id != second.request_id
    assert first.request_id.endswith(".0") and second.request_id.endswith(".1")
    receipt = await _feedback(
        verified, request_id=second.request_id, verdict=pb.FEEDBACK_VERDICT_CORRECT
    )
    assert receipt.entry_id == second.entry_id != first.entry_id


async def test_malformed_feedback_is_invalid_argument(verified: Service) -> None:
    stored = await _complete(verified, QUESTION)
    no_verdict = await _refused(verified, entry_id=stored.entry_id)
    no_id = await _refused(verified, verdict=pb.FEEDBACK_VERDICT_WRONG)
    bad_id = await _refused(verified, entry_id="not-an-id", verdict=pb.FEEDBACK_VERDICT_WRONG)
    assert no_verdict == no_id == bad_id == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_ids_are_not_found(verified: Service) -> None:
    await _complete(verified, QUESTION)
    wrong = pb.FEEDBACK_VERDICT_WRONG
    unknown_entry = await _refused(verified, entry_id=str(uuid.uuid4()), verdict=wrong)
    unknown_request = await _refused(verified, request_id="never-served", verdict=wrong)
    assert unknown_entry == unknown_request == grpc.StatusCode.NOT_FOUND


async def test_feedback_on_an_answer_never_stored_says_there_is_nothing_to_judge(
    verified: Service,
) -> None:
    """Found from outside: feedback by the request id of a bypass said "send the
    response's entry_id instead", and that response has none."""
    bypassed = await _complete(verified, QUESTION, cache_policy=pb.CACHE_POLICY_BYPASS)
    assert bypassed.request_id and not bypassed.entry_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _feedback(verified, request_id=bypassed.request_id, verdict=pb.FEEDBACK_VERDICT_WRONG)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "never stored (a bypass" in (caught.value.details() or "")


async def test_another_tenants_answer_is_not_found(keyed: HttpService) -> None:
    service = keyed.grpc
    entry_id, semantic = await _hit(service, CLIENT_KEY)
    wrong = pb.FEEDBACK_VERDICT_WRONG
    for key in (OTHER_KEY, ADMIN_KEY):  # feedback is a tenant call, even for an admin key
        assert await _refused(service, key, entry_id=entry_id, verdict=wrong) == (
            grpc.StatusCode.NOT_FOUND
        )
        by_request = await _refused(service, key, request_id=semantic.request_id, verdict=wrong)
        assert by_request == grpc.StatusCode.NOT_FOUND
    again = await _complete(service, PARAPHRASE, CLIENT_KEY)
    assert _served_from(again, entry_id)
    stats = await service.stub.GetCacheStats(
        pb.GetCacheStatsRequest(), metadata=_bearer(CLIENT_KEY)
    )
    assert [(r.feedback_wrong, r.feedback_correct) for r in stats.verification] == [(0, 0)]


async def test_feedback_needs_a_key(keyed: HttpService) -> None:
    assert await _refused(keyed.grpc, entry_id=str(uuid.uuid4()), verdict=1) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


# --- HTTP door ------------------------------------------------------------------------


async def _chat(keyed: HttpService, text: str, **semcache: Any) -> tuple[dict[str, Any], Any]:
    client = keyed.async_client(CLIENT_KEY)
    extra = {"semcache": semcache} if semcache else None
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=ask(text),  # type: ignore[arg-type]
        extra_body=extra,
    )
    await client.close()
    return raw.http_response.json(), raw.headers


async def _post_feedback(keyed: HttpService, body: object, key: str) -> tuple[int, Any]:
    url = f"{keyed.root_url}/v1/semcache/feedback"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=_auth(key)) as response,
    ):
        return response.status, await response.json()


async def test_http_hit_reports_error_probability_and_takes_max_error_rate(
    keyed: HttpService,
) -> None:
    await _chat(keyed, QUESTION)
    body, headers = await _chat(keyed, PARAPHRASE)
    probability = body["semcache"]["error_probability"]
    assert headers["x-semcache-cache-status"] == "semantic_hit" and probability > 0
    assert float(headers["x-semcache-error-probability"]) == pytest.approx(probability, abs=1e-4)
    strict, _ = await _chat(keyed, PARAPHRASE, max_error_rate=probability / 2, cache="no-store")
    assert strict["semcache"]["cache_status"] == "miss"
    assert strict["semcache"]["error_probability"] == 0.0


async def test_http_max_error_rate_out_of_range_is_a_400_naming_it(keyed: HttpService) -> None:
    url = f"{keyed.base_url}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": ask(QUESTION), "semcache": {"max_error_rate": 2}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=_auth(CLIENT_KEY)) as response,
    ):
        error = (await response.json())["error"]
        assert response.status == 400
    assert error["param"] == "max_error_rate" and "use 0.0 to 1.0" in error["message"]


async def test_http_wrong_feedback_stops_the_entry(keyed: HttpService) -> None:
    stored, _ = await _chat(keyed, QUESTION)
    entry_id = stored["semcache"]["entry_id"]
    hit, headers = await _chat(keyed, PARAPHRASE)
    request_id = headers["x-semcache-request-id"]
    assert hit["semcache"]["entry_id"] == entry_id and hit["semcache"]["request_id"] == request_id
    status, receipt = await _post_feedback(
        keyed, {"request_id": request_id, "verdict": "wrong"}, CLIENT_KEY
    )
    assert status == 200 and receipt["entry_id"] == entry_id and 0 < receipt["score"] < 1
    again, _ = await _chat(keyed, PARAPHRASE, cache="no-store")
    assert again["semcache"]["cache_status"] == "miss"


async def test_http_feedback_refusals(keyed: HttpService) -> None:
    stored, _ = await _chat(keyed, QUESTION)
    entry_id = stored["semcache"]["entry_id"]
    cases = [
        ({"entry_id": entry_id, "verdict": "meh"}, CLIENT_KEY, 400, "verdict"),
        ({"entry_id": entry_id}, CLIENT_KEY, 400, "verdict"),
        ({"verdict": "wrong"}, CLIENT_KEY, 400, None),
        ({"entry_id": "not-an-id", "verdict": "wrong"}, CLIENT_KEY, 400, "entry_id"),
        ([1, 2], CLIENT_KEY, 400, "body"),
        ({"entry_id": str(uuid.uuid4()), "verdict": "wrong"}, CLIENT_KEY, 404, None),
        ({"request_id": "never-served", "verdict": "wrong"}, CLIENT_KEY, 404, None),
        ({"entry_id": entry_id, "verdict": "wrong"}, OTHER_KEY, 404, None),
        ({"entry_id": entry_id, "verdict": "wrong"}, "sk-sc-unknown", 401, None),
    ]
    for body, key, want, param in cases:
        status, answer = await _post_feedback(keyed, body, key)
        assert status == want, (body, answer)
        if param is not None:
            assert answer["error"]["param"] == param, answer
    status, receipt = await _post_feedback(
        keyed, {"entry_id": entry_id, "verdict": "correct"}, CLIENT_KEY
    )
    assert (status, receipt) == (200, {"entry_id": entry_id, "score": 1.0})


# --- the thin client and the CLI ------------------------------------------------------


async def test_async_client_feedback_and_error_probability(verified: Service) -> None:
    target = f"127.0.0.1:{verified.server.port}"
    async with AsyncSemcacheClient(target) as client:
        stored = await client.complete(QUESTION)
        hit = await client.complete(PARAPHRASE, max_error_rate=0.5)
        assert hit.is_hit and hit.entry_id == stored.entry_id and hit.error_probability > 0
        receipt = await client.submit_feedback(request_id=hit.request_id, verdict="wrong")
        assert receipt.entry_id == stored.entry_id
        with pytest.raises(NotFound):
            await client.submit_feedback(entry_id=str(uuid.uuid4()), verdict="correct")
        stats = await client.stats()
    (row,) = stats.verification
    assert (row.namespace, row.feedback_wrong, row.semantic_served) == ("default", 1, 1)


async def test_sync_client_feedback(verified: Service) -> None:
    target = f"127.0.0.1:{verified.server.port}"

    def run() -> tuple[str, str, float]:
        with SemcacheClient(target) as client:
            stored = client.complete(QUESTION)
            receipt = client.submit_feedback(entry_id=stored.entry_id, verdict="correct")
            return stored.entry_id, receipt.entry_id, receipt.score

    stored_id, judged_id, score = await asyncio.to_thread(run)
    assert judged_id == stored_id and score == 1.0


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


async def test_cli_feedback_and_max_error_rate(
    verified: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", f"127.0.0.1:{verified.server.port}")
    assert (await _cli(capsys, "complete", QUESTION, *target))[0] == 0
    status, _, err = await _cli(capsys, "complete", PARAPHRASE, "--max-error-rate", "0.5", *target)
    answer = _fields(err.strip().splitlines()[-1])
    assert status == 0 and answer["cache"] == "semantic_hit" and float(answer["p_wrong"]) > 0
    status, out, _ = await _cli(
        capsys, "feedback", "--request-id", answer["request"], "--verdict", "wrong", *target
    )
    # (the in-process server logs to the same stdout: the command's line is the last)
    recorded = out.strip().splitlines()[-1]
    assert status == 0 and recorded.startswith(f"recorded wrong on entry {answer['entry']}")
    status, out, _ = await _cli(capsys, "stats", *target)
    assert status == 0 and "namespace=default" in out and "feedback_wrong=1" in out
    status, _, err = await _cli(
        capsys, "feedback", "--entry-id", str(uuid.uuid4()), "--verdict", "wrong", *target
    )
    assert status == 1 and err.startswith("semcache: NOT_FOUND")


async def test_a_request_id_reused_for_another_answer_is_refused_not_misapplied(
    verified: Service,
) -> None:
    """Found by an audit: a caller's `x-request-id` sent with two questions sent feedback
    meant for the first to the second's entry. Now the id is ambiguous and refused; the
    entry id still works, and a retry of one question under its id is no reuse."""
    trace = (("x-request-id", "trace-42"),)
    first = await verified.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=trace)
    again = await verified.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=trace)
    assert again.entry_id == first.entry_id
    receipt = await _feedback(verified, request_id="trace-42", verdict=pb.FEEDBACK_VERDICT_CORRECT)
    assert receipt.entry_id == first.entry_id, "the same answer twice: the id is not ambiguous"
    other = pb.CompleteRequest(prompt=OTHER_QUESTION)
    second = await verified.stub.Complete(other, metadata=trace)
    assert second.entry_id != first.entry_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _feedback(verified, request_id="trace-42", verdict=pb.FEEDBACK_VERDICT_WRONG)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entry_id" in (caught.value.details() or "")
    receipt = await _feedback(
        verified, request_id="trace-42", entry_id=first.entry_id, verdict=pb.FEEDBACK_VERDICT_WRONG
    )
    assert receipt.entry_id == first.entry_id


async def test_another_tenant_reusing_a_request_id_changes_nothing(keyed: HttpService) -> None:
    """Request ids are per tenant: another tenant sending the same `x-request-id` once
    took it over, and this tenant's feedback by it was NOT_FOUND."""
    service = keyed.grpc
    trace = (("x-request-id", "FIXED-ID-1"),)
    mine = await service.stub.Complete(
        pb.CompleteRequest(prompt=QUESTION), metadata=_bearer(CLIENT_KEY) + trace
    )
    await service.stub.Complete(
        pb.CompleteRequest(prompt=OTHER_QUESTION), metadata=_bearer(OTHER_KEY) + trace
    )
    receipt = await _feedback(
        service, CLIENT_KEY, request_id="FIXED-ID-1", verdict=pb.FEEDBACK_VERDICT_CORRECT
    )
    assert receipt.entry_id == mine.entry_id


async def test_an_entry_id_in_another_uuid_form_is_read_as_the_entry_it_names(
    verified: Service,
) -> None:
    """Found by an audit: `{…}`, upper-case or undashed forms were taken as they came, so
    one sent with its request id was refused as naming a different entry, and a receipt
    echoed the odd form. Each form is now read as the stored (lower-case, dashed) id."""
    stored = await _complete(verified, QUESTION)
    upper, braced = stored.entry_id.upper(), "{" + stored.entry_id + "}"
    receipt = await _feedback(
        verified, request_id=stored.request_id, entry_id=upper, verdict=pb.FEEDBACK_VERDICT_CORRECT
    )
    assert receipt.entry_id == stored.entry_id
    undashed = stored.entry_id.replace("-", "")
    receipt = await _feedback(verified, entry_id=undashed, verdict=pb.FEEDBACK_VERDICT_CORRECT)
    assert receipt.entry_id == stored.entry_id
    deleted = await verified.stub.DeleteEntry(pb.DeleteEntryRequest(entry_id=braced))
    assert deleted.deleted
    again = await _complete(verified, QUESTION)
    assert again.cache_status == pb.CACHE_STATUS_MISS


@pytest.mark.parametrize("sent", ["   ", "r" * 129])
async def test_a_request_id_that_cannot_be_one_is_replaced_by_a_new_one(
    verified: Service, sent: str
) -> None:
    """Found from outside: a blank id was taken as it came (feedback by it then named
    nothing a caller could type back); the README now says which ids are kept."""
    response = await verified.stub.Complete(
        pb.CompleteRequest(prompt=QUESTION), metadata=(("x-request-id", sent),)
    )
    assert response.request_id != sent
    assert len(response.request_id) == 32
