"""InvalidateCache deletes what it is asked to, and an empty request nothing."""

from __future__ import annotations

import grpc
import pytest

from service._proto.semcache.v1 import semcache_pb2 as pb
from tests.conftest import Service

QUESTION = "What is machine learning?"


def _as(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant),)


async def _fill(service: Service) -> None:
    for tenant in ("acme", "globex"):
        await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=_as(tenant))


async def _entries(service: Service, tenant: str) -> int:
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(), metadata=_as(tenant))
    return stats.entries


async def test_all_tenants_without_a_filter_is_refused(service: Service) -> None:
    await _fill(service)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.InvalidateCache(pb.InvalidateCacheRequest(all_tenants=True))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "all=true" in (caught.value.details() or "")
    assert (await _entries(service, "acme"), await _entries(service, "globex")) == (1, 1)


async def test_all_tenants_with_a_filter_deletes_only_what_it_selects(service: Service) -> None:
    await _fill(service)
    await service.stub.Complete(
        pb.CompleteRequest(prompt=QUESTION, namespace="faq"), metadata=_as("acme")
    )
    deleted = await service.stub.InvalidateCache(
        pb.InvalidateCacheRequest(all_tenants=True, namespace="faq")
    )
    assert deleted.deleted_entries == 1
    assert (await _entries(service, "acme"), await _entries(service, "globex")) == (1, 1)


async def test_all_tenants_and_all_deletes_every_entry(service: Service) -> None:
    await _fill(service)
    deleted = await service.stub.InvalidateCache(
        pb.InvalidateCacheRequest(all_tenants=True, all=True)
    )
    assert deleted.deleted_entries == 2
    assert (await _entries(service, "acme"), await _entries(service, "globex")) == (0, 0)


async def test_naming_a_tenant_and_all_tenants_is_refused(service: Service) -> None:
    """Found from outside: `all_tenants` silently dropped the named tenant, so an
    admin clearing one tenant's namespace cleared every tenant's."""
    await _fill(service)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.InvalidateCache(
            pb.InvalidateCacheRequest(tenant="acme", all_tenants=True, all=True)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (caught.value.details() or "")
    assert (await _entries(service, "acme"), await _entries(service, "globex")) == (1, 1)
