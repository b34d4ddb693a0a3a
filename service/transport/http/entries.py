"""`/v1/semcache/entries`: the HTTP twins of DeleteEntry (and, later, PutEntries).

Tenant rules are the gRPC door's: a client key acts on its own tenant's
entries only; an admin key (and every caller in open mode) on any tenant's.
Another tenant's entry id is answered exactly like a missing one.
"""

from __future__ import annotations

from aiohttp import web

from service.transport.http.door import CALL, DOOR

RPC_DELETE_ENTRY = "http_delete_entry"


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
