"""What of a conversation the cache embeds, verifies and keys on.

The final user message is the text (`conversation_text`); when it does not stand
alone ("cancel it"), the earlier turns it leans on are its context (`context_text`),
which the scope key carries and the near-miss guard checks separately.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.cache import guard_lexicon as lex

__all__ = ["context_text", "conversation_text"]

# Words that make a final message lean on earlier turns ("cancel it", "yes please"), or
# point back at them ("translate the above paragraph", "summarize my previous message":
# found from outside, these were matched without their history).
_ANAPHORA = lex.words(
    "it its that this those these them they one yes no ok okay please same there then and "
    "also instead above below previous preceding earlier prior former latter aforementioned "
    "again paragraph passage text message sentence answer response reply code snippet "
    "story list email letter document article poem essay conversation chat said mentioned "
    # Found from outside (third round): "the recipe for number two" picks from a list.
    "number option item choice first second third fourth fifth last next"
)
# An earlier turn where the user says what holds for them ("I live in Australia", "I
# use a Mac", "my plan is premium"): a final message in the first person ("the
# emergency number I should call", "how do I take a screenshot") leans on it. Found
# from outside: such questions were matched without their history. A first-person
# question after small talk ("thanks for the help with my statement") still stands.
_SELF_FACT = re.compile(
    r"\b(?:i(?: am|'m| live| use| work| have| own| run| speak| study| was born)"
    r"|i'm|my \w+(?: \w+)? (?:is|are|was|were))\b",
    re.IGNORECASE,
)
_FIRST_PERSON = lex.words("i me my mine myself we us our ours")
# An earlier turn that sets how every later answer must be ("from now on, reply only in
# Spanish", "answer in kilojoules"): a question after it never stands alone.
_STANDING_INSTRUCTION = re.compile(
    r"\b(?:from now on|going forward|for the rest of|until i say|always|never|"
    r"(?:reply|respond|answer|write|speak|talk)(?: \w+)? (?:in|as|like|with)|"
    r"pretend|act as|you are)\b",
    re.IGNORECASE,
)


def _stands_alone(message: str, earlier: Sequence[str]) -> bool:
    tokens = lex.ascii_tokens(message)  # English rules: other scripts never stand alone
    content = [t for t in tokens if t not in lex.STOPWORDS]
    if len(content) < 4 or _ANAPHORA.intersection(tokens):
        return False
    if _FIRST_PERSON.intersection(tokens) and any(_SELF_FACT.search(t) for t in earlier):
        return False
    return not any(_STANDING_INSTRUCTION.search(turn) for turn in earlier)


def conversation_text(messages: Sequence[tuple[str, str]]) -> str:
    """The text to embed and verify for a multi-turn request: its final user message.

    Raises:
        ValueError: if `messages` is empty or does not end with a user message.
    """
    if not messages or messages[-1][0] != "user":
        raise ValueError("messages must end with a user message")
    return messages[-1][1].strip()


def context_text(messages: Sequence[tuple[str, str]]) -> str:
    """The context that must match separately; "" when the final message stands alone.

    It is every earlier turn, the assistant's as well as the user's, so a swapped
    product, amount or offer anywhere earlier in the chat (an assistant's quote three
    turns back included) changes the exact key and is there for the guard's rules.
    The turns come newest first: a follow-up leans on the latest turns most, and an
    embedder reads only a text's first few hundred tokens (256 word pieces for the
    shipped model), so in a long chat it is the oldest turns the embedding drops.

    Raises:
        ValueError: if `messages` is empty or does not end with a user message.
    """
    final = conversation_text(messages)
    earlier = [content.strip() for _, content in reversed(messages[:-1])]
    if _stands_alone(final, earlier):
        return ""
    return "\n".join(turn for turn in earlier if turn)
