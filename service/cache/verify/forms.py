"""Everyday question forms: "What is X?" and "Can you explain X?" ask the same thing.

`form_key` strips a leading question form of a known intent and returns the intent
with the normalised subject that is left. Two questions with equal keys differ only
in how they are asked, so the decision treats them like an exact repeat (reason
"same_form"). Only forms of one intent share a group: "What is X?" and "Why is X?"
never do, and the subject must be identical word for word, so a swapped name,
number or negation in it still separates the two questions. "How do you X?" is left
out on purpose: on QQP it is as often a question about the assistant as a how-to.

Found from outside, and left out too: "How should I X?" (which X to choose: "how
should I vote") and "How could I X?" ("how could I get fired for this?") are not
"How do I X?"; a subject that starts with a possessive asks for someone's own value
("What is your name?"), not an explanation ("Tell me about your name"); and a
how-to's leading verb meets only the synonyms of `_VERB_SYNONYMS`, which name one
action on one object ("fix a match" is not "solve a match", nor "stop a nosebleed"
"close a nosebleed").
"""

from __future__ import annotations

import re

from service.cache.scope import normalise

__all__ = ["FORM_GROUPS", "form_key"]

# Each group lists prefixes (already normalised: lower case, no trailing "?") that
# ask for one thing about the subject after them. Longer prefixes come first.
FORM_GROUPS: dict[str, tuple[str, ...]] = {
    "define": (
        "can you please explain",
        "could you please explain",
        "can you explain to me",
        "could you explain to me",
        "please explain to me",
        "can you tell me about",
        "could you tell me about",
        "please tell me about",
        "i want to know about",
        "i'd like to know about",
        "can you explain",
        "could you explain",
        "please explain",
        "tell me about",
        "explain to me",
        "explain",
        "describe",
        "define",
        "what exactly is",
        "what is meant by",
        "what is",
        "what's",
    ),
    "how_to": (
        "what is the best way to",
        "what's the best way to",
        "what is the easiest way to",
        "what's the easiest way to",
        "how can i",
        "how do i",
        "how to",
    ),
}

_PREFIXES = sorted(
    ((prefix, group) for group, prefixes in FORM_GROUPS.items() for prefix in prefixes),
    key=lambda item: -len(item[0]),
)
_VERB_SYNONYMS = (
    "change update modify edit alter amend",
    "buy purchase",
    "cancel terminate",
    "delete remove erase",
    "start begin",
    "find locate",
    "make create",
)
_SYNONYM_OF = {word: line.split()[0] for line in _VERB_SYNONYMS for word in line.split()}
_POSSESSIVE = re.compile(r"^(?:my|your|our|his|her|their|its)\b")
_EDGE_PUNCTUATION = re.compile(r"^[\s,:;.!?]+|[\s,:;.!?]+$")
_FILLER = re.compile(r"^(?:please|pls|kindly)\s+|\s+(?:please|pls)$")


def _subject(rest: str) -> str:
    rest = _EDGE_PUNCTUATION.sub("", rest)
    return _FILLER.sub("", rest).strip()


def _canonical_verb(subject: str) -> str:
    """ "update my email" and "change my email": the leading verb up to a synonym."""
    verb, _, rest = subject.partition(" ")
    canonical = _SYNONYM_OF.get(verb, verb)
    return f"{canonical} {rest}".strip() if canonical != verb else subject


def form_key(text: str) -> tuple[str, str] | None:
    """(intent group, subject) of an everyday question form, or None for any other text.

    The longest matching prefix wins ("what is the best way to" before "what is").
    In a how-to question the subject's leading verb is replaced by its synonym
    group's first word, so "change" and "update" meet; nothing else is rewritten.
    """
    plain = normalise(text).replace("\u2019", "'")
    for prefix, group in _PREFIXES:
        if plain.startswith(prefix + " "):
            subject = _subject(plain[len(prefix) :])
            if not subject or (group == "define" and _POSSESSIVE.match(subject)):
                return None
            return (group, _canonical_verb(subject) if group == "how_to" else subject)
    return None
