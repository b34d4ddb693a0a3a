"""The pure parts of `map_reduce`, shared by the sync and the async client.

Map: one prompt per item, sent `batch_size` items per BatchComplete call (the
service runs each call's items concurrently). Reduce: the caller's function
over the answers, in the items' order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from semcache_client.types import Answer, CompleteParams, ItemFailure, MapOptions

T = TypeVar("T")

# The service caps one BatchComplete at SEMCACHE_BATCH_MAX_ITEMS; stay well below.
DEFAULT_BATCH_SIZE = 64


def map_requests(
    items: Iterable[T], map_prompt: Callable[[T], str], template: CompleteParams | None
) -> list[CompleteParams]:
    """One request per item: `template` with the item's prompt (and no messages)."""
    base = template or CompleteParams()
    return [dataclasses.replace(base, prompt=map_prompt(item), messages=None) for item in items]


def chunks(
    requests: Sequence[CompleteParams], batch_size: int
) -> Iterator[tuple[int, Sequence[CompleteParams]]]:
    """(index of the first item, items) for each batch of at most `batch_size`.

    Raises:
        ValueError: `batch_size` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(requests), batch_size):
        yield start, requests[start : start + batch_size]


def batches(
    items: Iterable[T], map_prompt: Callable[[T], str], options: MapOptions
) -> Iterator[tuple[int, Sequence[CompleteParams]]]:
    """The map's requests, `options["batch_size"]` at a time, each with its first item's index.

    Raises:
        ValueError: `batch_size` is below 1.
    """
    requests = map_requests(items, map_prompt, options.get("template"))
    return chunks(requests, options.get("batch_size", DEFAULT_BATCH_SIZE))


def renumber(results: list[Answer | ItemFailure], first_index: int) -> list[Answer | ItemFailure]:
    """Batch results with failures numbered by their place among all the items."""
    return [
        dataclasses.replace(r, index=r.index + first_index) if isinstance(r, ItemFailure) else r
        for r in results
    ]


def answers(results: Sequence[Answer | ItemFailure], skip_failures: bool) -> list[Answer]:
    """The answers, in order; failed items are dropped, or raised unless `skip_failures`.

    Raises:
        SemcacheError: (a subclass matching its status) for the first failed
            item, unless `skip_failures`.
    """
    failures = [r for r in results if isinstance(r, ItemFailure)]
    if failures and not skip_failures:
        raise failures[0].error()
    return [r for r in results if isinstance(r, Answer)]
