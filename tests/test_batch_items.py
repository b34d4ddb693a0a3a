"""BatchComplete's items fail as their own calls would (found from outside: an
item's unexpected error was "internal error" with no request id and no log line,
where a unary call's names its request id and logs its traceback)."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from service._proto.semcache.v1 import semcache_pb2 as pb
from service.domain import Completion, CompletionRequest
from tests.conftest import Service


async def test_an_items_internal_error_names_its_request_id_and_is_logged(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = service.app.pipeline
    complete = pipeline.complete

    async def failing(request: CompletionRequest) -> Completion:
        if request.question == "break me":
            raise RuntimeError("a bug")
        return await complete(request)

    monkeypatch.setattr(pipeline, "complete", failing)
    items = [pb.CompleteRequest(prompt="What is RAM?"), pb.CompleteRequest(prompt="break me")]
    with capture_logs() as logs:
        reply = await service.stub.BatchComplete(pb.BatchCompleteRequest(requests=items))

    good, bad = reply.results
    assert good.HasField("response")
    assert bad.status.code == grpc.StatusCode.INTERNAL.value[0]
    request_id = good.response.request_id.rsplit(".", 1)[0] + ".1"
    assert bad.status.message == f"internal error (request id {request_id})"
    failed = [entry for entry in logs if entry["event"] == "batch item failed"]
    assert [entry["request_id"] for entry in failed] == [request_id]
    assert isinstance(failed[0]["exc_info"], RuntimeError)
