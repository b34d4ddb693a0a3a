"""The seed article's paraphrase and everyday question forms hit with the default settings.

Through the whole service (real int8 embedder, guard, error budget at its default
delta, both store backends) on a cold cache: "Can you explain X?" after "What is X?"
must be served from the cache (issue 12, item 5), as a same-form hit.
"""

from __future__ import annotations

import pytest

from service.domain import CacheStatus, ChatMessage, CompletionRequest
from tests.conftest import Service

PAIRS = [
    ("What is machine learning?", "Can you explain machine learning?"),
    ("What is machine learning?", "Explain machine learning"),
    ("How do I change my email address?", "How can I update my email address?"),
    ("How do I reset my password?", "How can I reset my password?"),
]


def ask(question: str) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage("user", question),))


@pytest.mark.parametrize(("first", "second"), PAIRS)
async def test_an_everyday_form_of_a_cached_question_hits(
    service: Service, first: str, second: str
) -> None:
    stored = await service.app.pipeline.complete(ask(first))
    again = await service.app.pipeline.complete(ask(second))
    assert again.cache_status is CacheStatus.SEMANTIC_HIT, again.cache_detail
    assert again.cache_detail == "same_form"
    assert again.entry_id == stored.entry_id
    assert again.error_probability == 0.0


async def test_a_different_subject_in_the_same_form_does_not(service: Service) -> None:
    await service.app.pipeline.complete(ask("How do I change my email address?"))
    other = await service.app.pipeline.complete(ask("How can I change my home address?"))
    assert other.cache_status is CacheStatus.MISS
