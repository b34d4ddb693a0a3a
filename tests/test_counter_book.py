"""Verification counters per (tenant, namespace) stay bounded: a caller chooses its
namespaces, and each one kept apart is a stats row and a dozen Prometheus series."""

from __future__ import annotations

from service.cache.verify.counters import (
    MAX_NAMESPACES_PER_TENANT,
    OTHER_NAMESPACES,
    CounterBook,
)
from service.validation import NAME_PATTERN


def test_namespaces_past_the_bound_are_counted_together() -> None:
    """Found from outside: 5,000 namespaces of one tenant made /metrics 5 MB, and were
    never dropped."""
    book = CounterBook()
    for i in range(MAX_NAMESPACES_PER_TENANT + 44):
        book.of("acme", f"ns-{i}").requests += 1
    book.of("acme", "ns-0").requests += 1  # one kept apart goes on being counted apart
    rows = dict(book.of_tenant("acme"))
    assert len(rows) == MAX_NAMESPACES_PER_TENANT + 1
    assert rows["ns-0"].requests == 2
    assert rows[OTHER_NAMESPACES].requests == 44
    assert len(book.snapshot()) == MAX_NAMESPACES_PER_TENANT + 1


def test_each_tenant_has_its_own_bound_and_rows() -> None:
    book = CounterBook(max_namespaces=2)
    for tenant in ("a", "b"):
        for ns in ("x", "y", "z"):
            book.of(tenant, ns).requests += 1
    assert [ns for ns, _ in book.of_tenant("a")] == [OTHER_NAMESPACES, "x", "y"]
    assert book.of_tenant("nobody") == []
    copy = book.of_tenant("b")[1][1]
    copy.requests += 100
    assert book.of("b", "x").requests == 1, "rows are copies"


def test_the_shared_row_is_no_namespace_a_caller_can_name() -> None:
    assert not NAME_PATTERN.match(OTHER_NAMESPACES)


def test_a_namespace_past_the_bound_shows_the_shared_row() -> None:
    """Found from outside: GetCacheStats for such a namespace had no verification row."""
    from service.pipeline.admin import _rows_of

    book = CounterBook(max_namespaces=2)
    for ns in ("x", "y", "z"):
        book.of("a", ns).requests += 1
    rows = book.of_tenant("a")
    assert [ns for ns, _ in _rows_of(rows, "z")] == [OTHER_NAMESPACES]
    assert [ns for ns, _ in _rows_of(rows, "x")] == ["x"]
    assert len(_rows_of(rows, None)) == 3
    assert _rows_of(book.of_tenant("b"), "x") == []
