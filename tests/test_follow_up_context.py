"""A follow-up's context ("cancel it", "yes go on"): every earlier turn, newest first.

A swapped product, amount or offer anywhere earlier in the chat, an assistant's turn
included, must change the follow-up's context and so its exact key.
"""

from __future__ import annotations

import pytest

from service.cache.conversation import context_text
from service.cache.scope import cache_key
from service.domain import ChatMessage, CompletionRequest

Turns = list[tuple[str, str]]


def _chat(plan: str, offer: str) -> Turns:
    return [
        ("user", "What's the monthly price of Nimbus Fibre?"),
        ("assistant", f"Nimbus Fibre {plan} is on an 18-month contract."),
        ("user", "And do I get a router?"),
        ("assistant", f"Yes, a router comes with it. {offer}"),
        ("user", "yes go on"),
    ]


def _request(turns: Turns) -> CompletionRequest:
    return CompletionRequest(messages=tuple(ChatMessage(r, c) for r, c in turns))


def test_a_follow_ups_context_holds_every_earlier_turn_newest_first() -> None:
    context = context_text(_chat("150", "Shall I add the TV bundle?"))
    assert context.splitlines() == [
        "Yes, a router comes with it. Shall I add the TV bundle?",
        "And do I get a router?",
        "Nimbus Fibre 150 is on an 18-month contract.",
        "What's the monthly price of Nimbus Fibre?",
    ]


def test_a_detail_swapped_in_an_earlier_assistant_turn_changes_the_exact_key() -> None:
    offer = "Shall I add the TV bundle?"
    first = cache_key(_request(_chat("150", offer)), "model")
    swapped = cache_key(_request(_chat("900", offer)), "model")
    assert first.context != swapped.context
    assert first.point_id != swapped.point_id


def test_a_standalone_questions_key_did_not_move() -> None:
    """A standalone question's id, pinned: it moved on purpose when the exact form began
    to keep case and spacing (`EXACT_FORM_VERSION` 2), and again when only a common
    first word lost its capital and "!" stayed (3), so that no entry stored under a
    looser key is served by id for another question; those entries are still found by
    search, and served as identical to the same question."""
    from service.cache.scope import cache_key
    from service.domain import ChatMessage, CompletionRequest

    request = CompletionRequest(messages=(ChatMessage("user", "What is machine learning?"),))
    key = cache_key(request, "all-MiniLM-L6-v2/onnx-int8", "simulator")
    assert key.point_id == "e210864f-4b4a-578f-bd1a-6c9a43a46e09"


@pytest.mark.parametrize(
    ("history", "final"),
    [
        ("The cat sleeps on the warm windowsill.", "Translate the above paragraph into French."),
        ("I went hiking in the Alps last week.", "Summarize my previous message in two sentences"),
        ("From now on, reply only in Spanish.", "Write a haiku about autumn leaves"),
        ("Answer in kilojoules from now on.", "How many calories does a medium banana contain"),
        # Found from outside (third round).
        ("Dinner ideas: 1. pasta 2. curry 3. tacos", "Give me the recipe for number two"),
        ("I live in Australia.", "What is the emergency phone number I should call?"),
        ("I use a Mac.", "How do I take a screenshot of a window?"),
    ],
)
def test_a_final_message_that_points_back_or_follows_an_instruction_keeps_its_history(
    history: str, final: str
) -> None:
    """Found from outside: these counted as standalone, so the history was dropped and
    one text's translation, or a Spanish haiku, was served for another history."""
    from service.cache.conversation import context_text

    assert context_text([("user", history), ("assistant", "ok"), ("user", final)])
