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
    ("How do I change my email address?", "How can I change my email address?"),
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


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Define a function in Python", "What is a function in Python?"),
        ("Describe a sunset", "What is a sunset?"),
        ("What is 7 times 8?", "Explain 7 times 8"),
        ("What is the capital of France?", "Explain the capital of France"),
        ("What's today's date?", "Describe today's date"),
        ("What is SAD?", "Explain sad"),
        ("What is RAM?", "Explain ram"),
        ("Explain ls -a", "What is ls -A"),
        ("What is 5!", "What is 5?"),
        ("What is .NET", "What is NET"),
        ("How do I update my iPhone?", "How do I change my iPhone?"),
        ("How to find x in an equation", "How to locate x in an equation"),
        ("What is the easiest way to lose weight?", "What is the best way to lose weight?"),
        ("What is the best way to lose weight?", "How can I lose weight?"),
        ("How can I be so stupid?", "How do I be so stupid?"),
        # Found from outside (third round).
        ("What is seven times eight?", "Can you explain seven times eight?"),
        ("What is twelve squared?", "Explain twelve squared"),
        ("What is Tesla share price today?", "Explain Tesla share price today"),
        ("What is Easter this year?", "Explain Easter this year"),
        ("What is Bitcoin worth?", "Explain Bitcoin worth"),
        ("What is Pi to ten decimal places?", "Explain Pi to ten decimal places"),
        ("How can I help you?", "How do I help you?"),
        ("How can I thank you?", "How to thank you?"),
    ],
)
def test_forms_that_ask_different_things_share_no_key(first: str, second: str) -> None:
    """Found from outside (2026-12-02): each pair was served as the same form at
    P(wrong) 0. "Define" and "describe" are not "what is"; a subject with a number, a
    symbol or a particular ("the capital of") is no concept; case counts; verbs have no
    synonyms; the best and the easiest way are not each other, nor "how do I"."""
    from service.cache.verify.forms import form_key

    first_key, second_key = form_key(first), form_key(second)
    assert first_key is None or first_key != second_key
