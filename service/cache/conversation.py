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
    tokens = lex.tokens(message)
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

    It is every earlier user message plus the last assistant message, so a swapped
    product, amount or offer anywhere earlier in the chat blocks the hit.

    Raises:
        ValueError: if `messages` is empty or does not end with a user message.
    """
    final = conversation_text(messages)
    if _stands_alone(final):
        return ""
    earlier = messages[:-1]
    users = [content.strip() for role, content in earlier if role == "user"]
    assistant = next(
        (content.strip() for role, content in reversed(earlier) if role == "assistant"), ""
    )
    return "\n".join([*users, assistant]).strip()
