"""The request pipeline and its neighbours, none of which knows a transport.

- `request.RequestPipeline`: the path of one request (complete, stream, batch).
- `ledger.Ledger`: what each answer cost or saved, counted and turned into a `Completion`.
- `admin.CacheAdmin`: invalidation and per-tenant statistics.
- `maintenance.Maintenance`: the background upkeep loop (expiry, index builds).
"""
