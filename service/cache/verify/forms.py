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
("What is your name?"), not an explanation ("Tell me about your name").

Found from outside on 2026-12-02, each served at P(wrong) 0 for a question that asked
something else: "define" and "describe" are not "what is" ("define a function in
Python", "describe a sunset"); "explain X" is "what is X" only for a concept X, not a
number, a symbol or a particular ("explain 7 times 8", "explain the capital of
France"), so other subjects keep the two apart; case counts ("SAD" / "sad"); verbs have
no synonyms ("update" / "change" an iPhone); the best and the easiest way are neither
each other nor "how do I"; and a how-to of a state ("how can I be so stupid") is none.
In a third round: numbers in words ("seven times eight"), things of the moment
anywhere in the subject ("Tesla share price today", "Easter this year") and "to"
("Pi to ten decimal places") are particulars too, and a how-to addressed to the one
asked ("How can I help you?") is an offer, not a how-to.
"""

from __future__ import annotations

import re

from service.cache.scope import exact_form

__all__ = ["FORM_GROUPS", "form_key"]

# Each group lists prefixes (lower case, no trailing "?") that ask for one thing about
# the subject after them. Longer prefixes come first.
FORM_GROUPS: dict[str, tuple[str, ...]] = {
    "define": (
        "can you please explain",
        "could you please explain",
        "can you explain to me",
        "could you explain to me",
        "please explain to me",
        "can you explain",
        "could you explain",
        "please explain",
        "explain to me",
        "explain",
        "what exactly is",
        "what is meant by",
        "what is",
        "what's",
    ),
    "how_to": (
        "how can i",
        "how do i",
        "how to",
    ),
}

_PREFIXES = sorted(
    ((prefix, group) for group, prefixes in FORM_GROUPS.items() for prefix in prefixes),
    key=lambda item: -len(item[0]),
)
_POSSESSIVE = re.compile(r"^(?:my|your|our|his|her|their|its)\b", re.IGNORECASE)
# What "what is X" and "explain X" ask the same of: a concept, named in words alone (no
# number, symbol or punctuation: "7 times 8", ".NET", "5!", "ls -a"), and not a thing of
# the moment or a particular ("the capital of France", "the time in London", "today's
# date"), which "explain" asks the reasons of and "what is" the value of.
_CONCEPT = re.compile(r"^(?:[^\W\d_]+[ ]?){1,5}$")
_PARTICULAR = re.compile(
    r"^(?:the|this|that|these|those)\b"
    r"|\b(?:of|in|on|at|for|from|to)\b"
    # Found from outside (third round): numbers in words, sums, and things of the
    # moment anywhere in the subject ("seven times eight", "Tesla share price today",
    # "Easter this year", "Bitcoin worth", "Pi to ten decimal places").
    r"|\b(?:today|tonight|tomorrow|yesterday|now|current|currently|latest|this|next|last"
    r"|price|prices|worth|cost|costs|stock|share|shares|rate|year|month|week|day|date"
    r"|time|weather|score|result|results|times|plus|minus|divided|squared|cubed|percent"
    r"|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen"
    r"|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty"
    r"|sixty|seventy|eighty|ninety|hundred|thousand|million|billion|trillion|dozen"
    r"|half|quarter|infinity|pi)\b",
    re.IGNORECASE,
)
# A how-to of a state, not an action ("how can I be so stupid?").
_STATE = re.compile(r"^(?:be|feel|seem|look)\b", re.IGNORECASE)
# A how-to about the one asked is an offer or a courtesy ("How can I help you?" is not
# "How do I help you?"), found from outside.
_ADDRESSED = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)
_EDGE_PUNCTUATION = re.compile(r"^[\s,:;]+|[\s,:;]+$")
_FILLER = re.compile(r"^(?:please|pls|kindly)\s+|\s+(?:please|pls)$", re.IGNORECASE)


def _subject(rest: str) -> str:
    rest = _EDGE_PUNCTUATION.sub("", rest)
    return _FILLER.sub("", rest).strip()


def form_key(text: str) -> tuple[str, str] | None:
    """(intent group, subject) of an everyday question form, or None for any other text.

    The longest matching prefix wins; the subject is compared as `exact_form` leaves
    it, case included ("SAD" is not "sad", "Java" not "java").
    """
    plain = exact_form(text)  # curly quotes already straight
    lowered = plain.lower()
    if len(lowered) != len(plain):  # a letter whose lower case is longer: no offsets
        return None
    for prefix, group in _PREFIXES:
        if lowered.startswith(prefix + " "):
            subject = _subject(plain[len(prefix) :])
            if not subject or (
                group == "how_to" and (_STATE.match(subject) or _ADDRESSED.search(subject))
            ):
                return None
            if group == "define" and not _concept(subject):
                # "What's X?" is still "What is X?", but "Explain X" asks something else.
                group = "explain" if "explain" in prefix else "what_is"
            return (group, subject)
    return None


def _concept(subject: str) -> bool:
    return bool(_CONCEPT.match(subject)) and not (
        _POSSESSIVE.match(subject) or _PARTICULAR.search(subject)
    )
