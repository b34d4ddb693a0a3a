"""Verified hits on the wire, without a server: max_error_rate in (checked, raise-only
as sent), error_probability out, feedback requests and receipts, verification rows
and NotFoundError, in the gRPC door, the HTTP door, the Python client and validation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from semcache_client import NotFound, SemcacheClient
from semcache_client import _convert as client_convert
from semcache_client._proto.semcache.v1 import semcache_pb2 as client_pb
from semcache_client.errors import error_for
from semcache_client.types import CompleteParams
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import Principal, current_principal
from service.cache.verify.counters import VerificationCounters
from service.domain import (
    CacheStatus,
    ChatMessage,
    Completion,
    CompletionRequest,
    FeedbackVerdict,
    SamplingParams,
)
from service.errors import InvalidRequestError, NotFoundError
from service.pipeline.admin import NamespaceVerification
from service.transport.grpc.interceptors import request_id_var
from service.transport.grpc.servicer import (
    batch_item_id,
    namespace_verification,
    to_feedback,
    to_request,
    to_response,
)
from service.transport.grpc.status import status_for
from service.transport.http.errors import BadFieldError, http_error_for, param_of
from service.transport.http.feedback import parse_feedback
from service.transport.http.replies import completion_headers, extension
from service.transport.http.wire import cache_controls, parse_chat
from service.validation import MAX_REQUEST_ID_CHARS, Limits, validate

ENTRY = "0b7f6a43-4c1e-4e43-9d8b-3d8d1a0e2f11"


class _Context:
    def time_remaining(self) -> float:
        return 5.0


@pytest.fixture
def caller() -> Iterator[None]:
    principal = current_principal.set(Principal("acme", "client", "app"))
    rid = request_id_var.set("rpc-1")
    yield
    request_id_var.reset(rid)
    current_principal.reset(principal)


def _hit(probability: float) -> Completion:
    return Completion(
        content="ML is...",
        model="gpt-4o-mini",
        cache_status=CacheStatus.SEMANTIC_HIT,
        finish_reason="stop",
        entry_id=ENTRY,
        error_probability=probability,
    )


# -- validation ---------------------------------------------------------------------


def _request(max_error_rate: float | None) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage("user", "hi"),), max_error_rate=max_error_rate)


@pytest.mark.parametrize("value", [None, 0.0, 0.02, 1.0])
def test_max_error_rate_from_0_to_1_is_valid(value: float | None) -> None:
    validate(_request(value), Limits())


@pytest.mark.parametrize("value", [-0.01, 1.5, math.nan, math.inf])
def test_max_error_rate_outside_0_to_1_says_what_to_send(value: float) -> None:
    with pytest.raises(InvalidRequestError, match=r"^max_error_rate is .*; use 0.0 to 1.0"):
        validate(_request(value), Limits())


# -- gRPC door ------------------------------------------------------------------------


@pytest.mark.usefixtures("caller")
def test_grpc_request_carries_max_error_rate_and_the_rpcs_request_id() -> None:
    context: Any = _Context()
    sent = to_request(pb.CompleteRequest(prompt="hi", max_error_rate=0.002), context)
    assert sent.max_error_rate == 0.002 and sent.request_id == "rpc-1"
    assert sent.tenant == "acme"
    unset = to_request(pb.CompleteRequest(prompt="hi"), context, "rpc-1.3")
    assert unset.max_error_rate is None and unset.request_id == "rpc-1.3"
    zero = to_request(pb.CompleteRequest(prompt="hi", max_error_rate=0.0), context)
    assert zero.max_error_rate == 0.0  # explicitly 0 is the strictest budget, not unset


@pytest.mark.usefixtures("caller")
def test_grpc_response_carries_error_probability_and_its_request_id() -> None:
    response = to_response(_hit(0.0375))
    assert response.error_probability == pytest.approx(0.0375)
    assert response.request_id == "rpc-1" and response.entry_id == ENTRY
    assert to_response(_hit(0.0), "rpc-1.0").request_id == "rpc-1.0"


def test_each_batch_item_gets_its_own_request_id_within_the_limit() -> None:
    assert [batch_item_id("abc", i) for i in range(3)] == ["abc.0", "abc.1", "abc.2"]
    long = batch_item_id("x" * MAX_REQUEST_ID_CHARS, 255)
    assert len(long) == MAX_REQUEST_ID_CHARS and long.endswith(".255")


def test_grpc_feedback_verdicts_map_and_unspecified_is_refused() -> None:
    wrong = to_feedback(
        pb.SubmitFeedbackRequest(request_id="r1", verdict=pb.FEEDBACK_VERDICT_WRONG), "acme"
    )
    assert (wrong.tenant, wrong.verdict, wrong.request_id, wrong.entry_id) == (
        "acme",
        FeedbackVerdict.WRONG,
        "r1",
        "",
    )
    right = to_feedback(
        pb.SubmitFeedbackRequest(entry_id=ENTRY, verdict=pb.FEEDBACK_VERDICT_CORRECT), "acme"
    )
    assert right.verdict is FeedbackVerdict.CORRECT and right.entry_id == ENTRY
    for verdict in (pb.FEEDBACK_VERDICT_UNSPECIFIED, 7):
        request = pb.SubmitFeedbackRequest(entry_id=ENTRY, verdict=verdict)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="FEEDBACK_VERDICT_WRONG"):
            to_feedback(request, "acme")


def test_a_verification_row_maps_every_counter_and_the_interval() -> None:
    counters = VerificationCounters(
        requests=200,
        semantic_served=50,
        expected_wrong=1.5,
        explored=12,
        audits=10,
        audit_wrong=1,
        judged_same=9,
        judged_wrong=3,
        feedback_correct=4,
        feedback_wrong=2,
    )
    row = namespace_verification(NamespaceVerification("support", counters))
    audited, low, high = counters.audited_error_rate()
    assert row.namespace == "support" and (row.requests, row.semantic_served) == (200, 50)
    assert row.expected_error_rate == pytest.approx(0.0075)
    sent = (row.audited_error_rate, row.audited_error_rate_low, row.audited_error_rate_high)
    assert sent == pytest.approx((audited, low, high))
    assert audited == pytest.approx(0.1 * 0.25) and low < audited < high
    assert (row.explored, row.audits, row.audit_wrong) == (12, 10, 1)
    assert (row.judged_same, row.judged_wrong) == (9, 3)
    assert (row.feedback_correct, row.feedback_wrong) == (4, 2)


def test_not_found_is_grpc_not_found_and_http_404() -> None:
    error = NotFoundError("no such entry")
    assert status_for(error) is grpc.StatusCode.NOT_FOUND
    answer = http_error_for(error)
    assert (answer.status, answer.code, answer.metric_code) == (404, "not_found", "NOT_FOUND")


# -- HTTP door ------------------------------------------------------------------------


def _chat(
    extension: dict[str, object] | None = None, headers: dict[str, str] | None = None
) -> CompletionRequest:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if extension is not None:
        body["semcache"] = extension
    return parse_chat(body, headers or {}, "acme", None, "req-9").request


def test_http_max_error_rate_from_the_body_or_its_header_and_the_request_id() -> None:
    assert _chat().max_error_rate is None and _chat().request_id == "req-9"
    assert _chat({"max_error_rate": 0.01}).max_error_rate == 0.01
    header = {"x-semcache-max-error-rate": "0.02"}
    assert _chat(headers=header).max_error_rate == 0.02
    both = _chat({"max_error_rate": 0}, header)
    assert both.max_error_rate == 0.0  # the body wins over the header


@pytest.mark.parametrize("value", ["lots", "nan"])
def test_http_max_error_rate_that_is_no_number_names_its_header(value: str) -> None:
    with pytest.raises(BadFieldError) as caught:
        cache_controls(None, {"x-semcache-max-error-rate": value})
    assert caught.value.param == "x-semcache-max-error-rate"


def test_http_reply_carries_error_probability_in_body_and_header() -> None:
    completion = _hit(0.0421)
    assert extension(completion, "r")["error_probability"] == pytest.approx(0.0421)
    assert completion_headers(completion, "r")["x-semcache-error-probability"] == "0.0421"


def test_http_feedback_body_parses_and_a_bad_verdict_is_named() -> None:
    feedback = parse_feedback({"request_id": "r1", "verdict": "Wrong"}, "acme")
    assert (feedback.verdict, feedback.request_id, feedback.tenant) == (
        FeedbackVerdict.WRONG,
        "r1",
        "acme",
    )
    assert parse_feedback({"entry_id": ENTRY, "verdict": "correct"}, "t").entry_id == ENTRY
    for body in ({"entry_id": ENTRY}, {"entry_id": ENTRY, "verdict": "meh"}):
        with pytest.raises(BadFieldError) as caught:
            parse_feedback(body, "acme")
        assert caught.value.param == "verdict"
    with pytest.raises(BadFieldError) as not_text:
        parse_feedback({"entry_id": 5, "verdict": "wrong"}, "acme")
    assert not_text.value.param == "entry_id"


# -- Python client ---------------------------------------------------------------------


def test_client_sends_max_error_rate_only_when_set() -> None:
    unset = client_convert.complete_request(CompleteParams("hi"))
    assert not unset.HasField("max_error_rate")
    sent = client_convert.complete_request(CompleteParams("hi", max_error_rate=0.0))
    assert sent.HasField("max_error_rate") and sent.max_error_rate == 0.0


def test_client_reads_error_probability_and_verification_rows() -> None:
    answer = client_convert.answer(client_pb.CompleteResponse(error_probability=0.03))
    assert answer.error_probability == pytest.approx(0.03)
    row = client_pb.NamespaceVerification(
        namespace="support", requests=9, audited_error_rate_high=0.2, feedback_wrong=1
    )
    stats = client_convert.stats(client_pb.GetCacheStatsResponse(tenant="t", verification=[row]))
    (read,) = stats.verification
    assert (read.namespace, read.requests, read.feedback_wrong) == ("support", 9, 1)
    assert read.audited_error_rate_high == pytest.approx(0.2)


def test_client_feedback_request_and_receipt() -> None:
    request = client_convert.feedback_request(None, "r1", "wrong")
    assert request.request_id == "r1" and request.verdict == client_pb.FEEDBACK_VERDICT_WRONG
    request = client_convert.feedback_request(ENTRY, None, "correct")
    assert request.entry_id == ENTRY and request.verdict == client_pb.FEEDBACK_VERDICT_CORRECT
    receipt = client_convert.feedback_receipt(
        client_pb.SubmitFeedbackResponse(entry_id=ENTRY, score=0.91)
    )
    assert receipt.entry_id == ENTRY and receipt.score == pytest.approx(0.91)


def test_client_refuses_a_bad_verdict_or_no_id_before_sending() -> None:
    with SemcacheClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match='"correct" or "wrong"'):
            client.submit_feedback(entry_id=ENTRY, verdict="meh")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="entry_id or the request_id"):
            client.submit_feedback(verdict="wrong")


def test_client_raises_not_found_for_not_found() -> None:
    assert isinstance(error_for(grpc.StatusCode.NOT_FOUND, "no such entry"), NotFound)


@pytest.mark.parametrize("calls", ["tool_calls", "function_call"])
def test_an_assistant_turn_that_called_a_tool_is_refused_naming_it(calls: str) -> None:
    """Found from outside: its tool calls were dropped without a word and the rest
    answered (and cached) as if the conversation had none, where the README says it is
    refused."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn = {"role": "assistant", "content": None, calls: [call] if calls == "tool_calls" else call}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, turn,
                                       {"role": "user", "content": "and then?"}]}  # fmt: skip
    with pytest.raises(BadFieldError) as caught:
        parse_chat(body, {}, "acme", None, "req-9")
    assert caught.value.param == f"messages[1].{calls}"


_TOOL = '[{"type": "function", "function": {"name": "f"}}]'


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"messages": (ChatMessage("user", "hi"),) * 65}, "messages"),
        ({"messages": (ChatMessage("user", "hi"), ChatMessage("assistant", "yo"))}, "messages"),
        ({"messages": (ChatMessage("user", " \u200b "),)}, "messages"),
        ({"messages": (ChatMessage("user", "x" * 40_000),)}, "messages"),
        ({"sampling": SamplingParams(stop=("a", "b", "c", "d", "e"))}, "stop"),
        ({"sampling": SamplingParams(stop=("",))}, "stop"),
        ({"sampling": SamplingParams(tools_json="[" + _TOOL[1:-1] * 2000 + "]")}, "tools"),
    ],
)
def test_a_refused_field_is_named_in_the_http_errors_param(
    changes: dict[str, object], param: str
) -> None:
    """Found from outside: these 400s had `param: null`."""
    request = replace(CompletionRequest(messages=(ChatMessage("user", "hi"),)), **changes)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as caught:
        validate(request, Limits())
    assert param_of(caught.value) == param


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "0.5"), ("top_p", "1"), ("max_tokens", "7"), ("n", True)],
)
def test_a_body_number_sent_as_text_or_a_boolean_is_refused(field: str, value: object) -> None:
    """Found from outside: these were accepted, where OpenAI's API answers 400."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(BadFieldError) as caught:
        parse_chat(body, {}, "acme", None, "req-9")
    assert caught.value.param == field
