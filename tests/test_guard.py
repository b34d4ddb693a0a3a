"""Near-miss guard: fixed cosines in, decisions out (no embedding model needed)."""

import pytest

from service.cache.conversation import context_text, conversation_text
from service.cache.guard import NearMissGuard


@pytest.fixture
def guard() -> NearMissGuard:
    return NearMissGuard()


@pytest.mark.parametrize(
    ("query", "cached", "reason"),
    [
        ("How do I turn on 2FA?", "How do I turn off 2FA?", "antonym_mismatch"),
        ("Is the deposit $50?", "Is the deposit $500?", "number_mismatch"),
        ("Remind me at 7pm", "Remind me at 7am", "number_mismatch"),
        ("Don't cancel my subscription", "Cancel my subscription", "negation_mismatch"),
        ("Who is the CEO of Microsoft?", "Who is the CEO of Apple?", "entity_mismatch"),
        (
            "Transfer £50 from my savings to my current account",
            "Transfer £50 from my current account to my savings",
            "direction_swap",
        ),
        ("How do I update the app on iPhone?", "How do I update the app on Android?",
         "entity_mismatch"),
    ],
)  # fmt: skip
def test_near_miss_rejected_even_at_high_cosine(
    guard: NearMissGuard, query: str, cached: str, reason: str
) -> None:
    verdict = guard.verify(query, cached, similarity=0.97)
    assert not verdict.accept
    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("query", "cached", "reason"),
    [
        ("Should I turn on 2FA?", "Should I turn of\u00adf 2FA?", "antonym_mismatch"),
        ("Should I turn on 2FA?", "Should I turn of\u200bf 2FA?", "antonym_mismatch"),
        ("Should I turn on 2FA?", "Should I turn of\u2060f 2FA?", "antonym_mismatch"),
        ("Is it safe to eat raw eggs?", "Is it n\u00adot safe to eat raw eggs?",
         "negation_mismatch"),
        ("Why is my battery draining fast?", "Why isn\u00ad't my battery draining fast?",
         "negation_mismatch"),
        ("Flights from London to Paris", "Flights t\u00ado London fr\u00adom Paris",
         "direction_swap"),
    ],
)  # fmt: skip
def test_invisible_characters_inside_a_word_do_not_hide_it_from_the_rules(
    guard: NearMissGuard, query: str, cached: str, reason: str
) -> None:
    """Found from outside: a soft hyphen or a zero-width character inside "off", "not" or
    "to" kept the rules from seeing the word, while the embedder (which drops them) scored
    the pair as the plain one; served as a semantic hit with the error budget off."""
    verdict = guard.verify(query, cached, similarity=0.957)
    assert (verdict.accept, verdict.reason) == (False, reason)


@pytest.mark.parametrize(
    ("query", "cached", "reason"),
    [
        ("Is 5 > 3?", "Is 5 < 3?", "operator_mismatch"),
        ("Is x = y?", "Is x \u2260 y?", "operator_mismatch"),
        ("Is 5 > 3?", "Is 5 \u226f 3?", "operator_mismatch"),
        ("Is a <= b here?", "Is a >= b here?", "operator_mismatch"),
        ("Does x == y hold?", "Does x != y hold?", "operator_mismatch"),
        ("What does año mean?", "What does ano mean?", "accent_mismatch"),
        ("résumé tips", "resume tips", "accent_mismatch"),
        # a Cyrillic, then a Greek, look-alike of "o"
        ("Is it safe to eat raw eggs?", "Is it n\u043et safe to eat raw eggs?", "mixed_script"),
        ("How do I turn on 2FA?", "How do I turn \u03bfff 2FA?", "mixed_script"),
    ],
)
def test_what_the_tokens_do_not_see_is_a_different_question(
    guard: NearMissGuard, query: str, cached: str, reason: str
) -> None:
    """Found from outside (error budget off), each served at cosine 0.90-1.00: a
    comparison ("5 > 3" / "5 < 3"), accents the embedder strips ("año" is a year, "ano"
    is not), a look-alike letter from another script that hid a negation."""
    verdict = guard.verify(query, cached, similarity=0.99)
    assert (verdict.accept, verdict.reason) == (False, reason)


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Is a >= b here?", "Is a \u2265 b here?"),
        ("Does x != y hold?", "Does x \u2260 y hold?"),
        ("How old is José Mourinho?", "How old is Jose Mourinho?"),
        ("Where was Pelé born?", "Where was Pele born?"),
    ],
)
def test_one_operator_or_name_written_two_ways_is_not_a_mismatch(
    guard: NearMissGuard, query: str, cached: str
) -> None:
    """Found from outside: each was refused at cosine 1.0 (operator or entity mismatch)."""
    verdict = guard.verify(query, cached, similarity=0.99)
    assert verdict.reason not in ("operator_mismatch", "entity_mismatch", "accent_mismatch")


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How can I reset my password?", "How do I reset my password?"),
        ("How do I change energy supplier?", "How do I switch energy supplier?"),
        ("Where can I find my invioce history?", "Where can I find my invoice history?"),
    ],
)
def test_paraphrase_accepted(guard: NearMissGuard, query: str, cached: str) -> None:
    verdict = guard.verify(query, cached, similarity=0.93)
    assert verdict.accept
    assert verdict.reason == "ok"
    assert 0.0 <= verdict.score <= 1.0


def test_floor_is_never_crossed() -> None:
    guard = NearMissGuard(similarity_min=0.9)
    verdict = guard.verify("How do I reset my password?", "How do I reset my password?", 0.89)
    assert not verdict.accept
    assert verdict.reason == "below_threshold"


def test_identical_text_accepted_above_floor(guard: NearMissGuard) -> None:
    assert guard.verify("What's the check-out time?", "what's the check-out time", 0.99).accept


def test_low_cosine_paraphrase_scored_out(guard: NearMissGuard) -> None:
    verdict = guard.verify("How do I learn Python quickly?", "Best books for Python?", 0.76)
    assert not verdict.accept
    assert verdict.reason == "low_score"


GYM = [
    ("user", "My PulseFit gym membership costs too much."),
    ("assistant", "Your PulseFit Off-Peak membership is £24.99 a month."),
    ("user", "Cancel it."),
]
STREAMING = [
    ("user", "I've got a Flixora subscription I barely use."),
    ("assistant", "Your Flixora Standard plan renews on the 3rd."),
    ("user", "cancel it"),
]


def test_conversation_text_is_final_user_message() -> None:
    assert conversation_text(GYM) == "Cancel it."


def test_conversation_text_requires_final_user_message() -> None:
    with pytest.raises(ValueError, match="user message"):
        conversation_text(GYM[:2])


def test_short_follow_up_carries_its_context() -> None:
    context = context_text(GYM)
    assert "PulseFit gym membership" in context
    assert "£24.99" in context


def test_standalone_question_needs_no_context() -> None:
    chat = [*GYM[:2], ("user", "What's the cooling-off period for a new broadband contract?")]
    assert context_text(chat) == ""


def test_cancel_it_not_served_across_subscriptions(guard: NearMissGuard) -> None:
    verdict = guard.verify_context(context_text(GYM), context_text(STREAMING), similarity=0.8)
    assert not verdict.accept
    assert verdict.reason.startswith("context_")


def test_same_context_passes(guard: NearMissGuard) -> None:
    verdict = guard.verify_context(context_text(GYM), context_text(GYM), similarity=0.99)
    assert verdict.accept


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Как включить двухфакторную защиту?", "Как отключить двухфакторную защиту?"),
        ("Какая столица Франции?", "Какая столица Германии?"),
        ("Translate 你好 to English", "Translate 谢谢 to English"),
        ("What does the 🍕 emoji mean?", "What does the 🍣 emoji mean?"),
        ("Is x ≠ y?", "Is x = y?"),
        ("Is a < b?", "Is a > b?"),
        ("What is 3²?", "What is 32?"),
        ("Compute 5!", "Compute 5"),
        # found from outside: marks other than these once counted for nothing
        ("What is 10 - 2?", "What is 10 / 2?"),
        ("What is 6 * 3?", "What is 6 - 3?"),
        ("What does * do in C?", "What does & do in C?"),
        ("What does rm -rf / do?", "What does rm -rf ./ do?"),
        ("Convert -40 degrees C to F", "Convert 40 degrees C to F"),
        ("Is 10% of 50 five?", "Is 10 of 50 five?"),
        ("What is 2/3 of 90?", "What is 2-3 of 90?"),
        ("What does print(1/2) print?", "What does print(1//2) print?"),
        ("Let's eat, grandma!", "Let's eat grandma!"),
        # Found from outside (2026-12-02): a mark's place, quotes, a hyphen between
        # letters and case inside a sentence count too.
        ("What is -5 minus 3?", "What is 5 minus -3?"),
        ("What is 20% of 50?", "What is 20 of 50%?"),
        ("What is the type of '5' in Python?", "What is the type of 5 in Python?"),
        ("What does echo '$HOME' print?", 'What does echo "$HOME" print?'),
        ("What is a-b if a=5 and b=3?", "What is a b if a=5 and b=3?"),
        ("What does git push origin :feature do?", "What does git push origin feature: do?"),
        ("What does ls -l do?", "What does ls -L do?"),
        ("What is IT?", "What is it?"),
        ("What does len('a  b') return?", "What does len('a b') return?"),
        # Found from outside (third round): an apostrophe inside a word and a hyphen
        # between words were let through as identical.
        ("Fix the grammar: Lets go to the park", "Fix the grammar: Let's go to the park"),
        ("Translate its into French", "Translate it's into French"),
        ("SELECT price-discount FROM items", "SELECT price discount FROM items"),
        ("What does re-sign mean?", "What does re sign mean?"),
    ],
)  # fmt: skip
def test_texts_differing_in_other_scripts_or_symbols_are_never_identical(
    guard: NearMissGuard, query: str, cached: str
) -> None:
    """Words of any script, and symbols, count: "identical" is served at P(wrong) 0,
    and these once were (only [a-z0-9] was compared)."""
    verdict = guard.verify(query, cached, similarity=0.97)
    assert verdict.reason != "identical"


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Как включить двухфакторную аутентификацию?", "как включить двухфакторную аутентификацию"),
        ("What does the 🍕 emoji mean?", "what does the 🍕 emoji mean"),
        ("Is x ≠ y?", "is x ≠ y"),
        ("Compute 5!", "compute 5!"),
        ("Why don’t cats   swim?", "why don't cats swim"),
        ("How do I reset my password?", "how do i reset my password"),
    ],
)  # fmt: skip
def test_case_spacing_and_punctuation_still_leave_texts_identical(
    guard: NearMissGuard, query: str, cached: str
) -> None:
    assert guard.verify(query, cached, similarity=0.97).reason == "identical"


def test_texts_with_no_word_or_symbol_are_identical_only_to_themselves(
    guard: NearMissGuard,
) -> None:
    """Two prompts of only private-use characters (or only punctuation) once shared an
    empty compared form, so each was served the other's answer as `identical`."""
    assert guard.verify("\ue000", "\ue001", similarity=1.0).reason != "identical"
    assert guard.verify("???", "!!!", similarity=1.0).reason != "identical"
    assert guard.verify("\ue000", "\ue000", similarity=1.0).reason == "identical"


def test_names_in_other_scripts_are_entities_too(guard: NearMissGuard) -> None:
    """A capitalised word mid-sentence is a name in any script: France is not Germany in
    Russian either, and "Pokémon" is the "Pokemon" one letter away, not "Pok"."""
    swapped = guard.verify("Какая столица Франции?", "Какая столица Германии?", similarity=0.95)
    assert swapped.reason == "entity_mismatch"
    same = guard.verify(
        "Will Misty ever return to Pokemon?", "Will Misty ever return to Pokémon?", 0.97
    )
    assert same.accept
