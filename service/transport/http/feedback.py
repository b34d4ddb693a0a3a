"""`POST /v1/semcache/feedback`: the HTTP twin of SubmitFeedback.

An application's verdict on an answer it was given, by the `entry_id` or the
`request_id` its response carried (the body's `semcache.entry_id` and
`semcache.request_id`, or the `x-semcache-entry-id` and `x-semcache-request-id`
response headers).
A tenant call, as on the gRPC port: the entry must be the caller's tenant's.

    POST /v1/semcache/feedback {"entry_id": ..., "request_id": ..., "verdict": "wrong"}
        → 200 {"entry_id": ..., "score": ...}
        → 400 no id, a malformed one, or a verdict other than "correct" / "wrong"
        → 404 an unknown entry or request id, or another tenant's entry
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from service.domain import Feedback, FeedbackVerdict
from service.transport.http.chat import json_body
from service.transport.http.door import CALL, DOOR
from service.transport.http.errors import BadFieldError
from service.transport.http.wire import optional_field

RPC_FEEDBACK = "http_submit_feedback"
VERDICTS = {verdict.value: verdict for verdict in FeedbackVerdict}


async def submit_feedback(request: web.Request) -> web.Response:
    """`POST /v1/semcache/feedback`: `{"entry_id": ..., "score": ...}` of the recorded verdict.

    Raises:
        AuthenticationError: keys are configured and the request has no known key (401).
        BadFieldError: the body or one of its fields is malformed (400).
        InvalidRequestError: no id, or a malformed one (400).
        NotFoundError: an unknown id, or another tenant's entry (404).
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_FEEDBACK
    tenant = door.principal(request).tenant
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadFieldError("body", "the request body must be a JSON object")
    receipt = await door.app.admin.submit_feedback(parse_feedback(body, tenant))
    return web.json_response({"entry_id": receipt.entry_id, "score": receipt.score})


def parse_feedback(body: Mapping[str, Any], tenant: str) -> Feedback:
    """The domain feedback for a feedback body, in the caller's `tenant`.

    Raises:
        BadFieldError: `verdict` is missing or not "correct" / "wrong", or an id is
            not a string.
    """
    verdict = optional_field(body, "verdict", str)
    if verdict is None:
        raise BadFieldError("verdict", 'verdict is missing; send "correct" or "wrong"')
    if verdict.strip().lower() not in VERDICTS:
        raise BadFieldError("verdict", f'verdict is {verdict[:64]!r}; send "correct" or "wrong"')
    return Feedback(
        tenant=tenant,
        verdict=VERDICTS[verdict.strip().lower()],
        entry_id=optional_field(body, "entry_id", str) or "",
        request_id=optional_field(body, "request_id", str) or "",
    )
