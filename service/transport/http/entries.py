"""`/v1/semcache/entries`: the HTTP twins of PutEntries and DeleteEntry.

Tenant rules are the gRPC door's: entries are written into the caller's own
tenant; a client key deletes only its own tenant's entries, an admin key (and
every caller in open mode) any tenant's. Another tenant's entry id is answered
exactly like a missing one.

    POST /v1/semcache/entries
        {"entries": [{"question": ..., "answer": ...}], "namespace", "ttl_s",
         "model", "system_prompt", "temperature", "top_p", "max_tokens"}
        → {"results": [{"entry_id": ...} | {"error": {"status", "code", "message"}}]}
    DELETE /v1/semcache/entries/{entry_id} → {"entry_id": ..., "deleted": bool}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from service.domain import SamplingParams
from service.pipeline.seed import SeedScope, seeds_for
from service.transport.http.chat import json_body
from service.transport.http.door import CALL, DOOR
from service.transport.http.errors import BadFieldError, http_error_for
from service.transport.http.wire import (
    optional_field,
    optional_integer,
    optional_number,
    refuse_unknown,
)

RPC_DELETE_ENTRY = "http_delete_entry"
RPC_PUT_ENTRIES = "http_put_entries"


async def delete_entry(request: web.Request) -> web.Response:
    """`DELETE /v1/semcache/entries/{entry_id}`: `{"entry_id": ..., "deleted": bool}`.

    Raises:
        AuthenticationError: keys are configured and the request has no known key (401).
        InvalidRequestError: the id is not an entry id (400).
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_DELETE_ENTRY
    principal = door.principal(request)
    tenant = None if principal.is_admin else principal.tenant
    entry_id = request.match_info["entry_id"]
    deleted = await door.app.admin.delete_entry(tenant, entry_id)
    return web.json_response({"entry_id": entry_id, "deleted": deleted})


async def put_entries(request: web.Request) -> web.Response:
    """`POST /v1/semcache/entries`: seed curated answers; one result per entry, in order.

    Raises:
        AuthenticationError: keys are configured and the request has no known key (401).
        BadFieldError: the body or one of its fields is malformed (400).
        InvalidRequestError: no entries, or too many in one call (400).
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_PUT_ENTRIES
    tenant = door.principal(request).tenant
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadFieldError("body", "the request body must be a JSON object")
    refuse_unknown(body, _BODY_FIELDS, hints={"tenant": "the tenant is the API key's"})
    pairs = [_pair(index, raw) for index, raw in enumerate(_entries(body))]
    results = await door.app.admin.put_entries(seeds_for(_scope(body, tenant), pairs))
    return web.json_response({"results": [_result(r) for r in results]})


# Found from outside: a field the route does not read ("tenant", a misspelt "ttl")
# was dropped without a word, and the entries were stored under the defaults.
_BODY_FIELDS = (
    "entries", "namespace", "model", "system_prompt", "temperature", "top_p", "max_tokens",
    "ttl_s",
)  # fmt: skip
_ENTRY_FIELDS = ("question", "answer")


def _entries(body: Mapping[str, Any]) -> list[Any]:
    entries = optional_field(body, "entries", list)
    if entries is None:
        raise BadFieldError("entries", 'entries is missing: send [{"question", "answer"}, ...]')
    return entries


def _pair(index: int, raw: object) -> tuple[str, str]:
    where = f"entries[{index}]"
    if not isinstance(raw, dict):
        raise BadFieldError(where, f'{where} must be a JSON object {{"question", "answer"}}')
    refuse_unknown(raw, _ENTRY_FIELDS, where)
    question, answer = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise BadFieldError(where, f"{where} needs a string question and a string answer")
    return question, answer


def _scope(body: Mapping[str, Any], tenant: str) -> SeedScope:
    return SeedScope(
        tenant=tenant,
        namespace=optional_field(body, "namespace", str) or "default",
        model=optional_field(body, "model", str) or None,
        system_prompt=optional_field(body, "system_prompt", str) or "",
        sampling=SamplingParams(
            temperature=optional_number(body, "temperature"),
            top_p=optional_number(body, "top_p"),
            max_tokens=optional_integer(body, "max_tokens"),
        ),
        ttl_s=optional_integer(body, "ttl_s"),
    )


def _result(result: str | Exception) -> dict[str, Any]:
    if isinstance(result, str):
        return {"entry_id": result}
    answer = http_error_for(result)
    message = str(result) if answer.status < 500 else "the entry was not stored"
    return {"error": {"status": answer.status, "code": answer.code, "message": message}}
