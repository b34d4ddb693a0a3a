"""What of a conversation the cache embeds, verifies and keys on.

The final user message is the text (`conversation_text`); when it does not stand
alone ("cancel it"), the earlier turns it leans on are its context (`context_text`),
which the scope key carries and the near-miss guard checks separately.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.cache import guard_lexicon as lex

__all__ = ["context_text", "conversation_text"]

# Words that make a final message lean on earlier turns ("cancel it", "yes please").
_ANAPHORA = lex.words(
    "it its that this those these them they one yes no ok okay please same there then and "
    "also instead"
)


def _stands_alone(message: str) -> bool:
    tokens = lex.ascii_tokens(message)  # English rules: other scripts never stand alone
    content = [t for t in tokens if t not in lex.STOPWORDS]
    return len(content) >= 4 and not _ANAPHORA.intersection(tokens)


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
    if _stands_alone(final):
        return ""
    earlier = [content.strip() for _, content in reversed(messages[:-1])]
    return "\n".join(turn for turn in earlier if turn)
