"""Deterministic answers and the simulator's token count.

Tokens are approximated as words and single punctuation marks: a token is a
run of word characters (`\\w+`) or one other non-space character, together
with the whitespace before it. The same rule counts prompt and completion
tokens and cuts a streamed answer into deltas, so the deltas of a stream
concatenate to the unary answer and their number is its `completion_tokens`.

An answer depends only on the model and the (role, text) of each message:
a `random.Random` seeded from their SHA-256 picks its length and filler, so
the same question to the same model gets the same text, byte for byte, in
every process.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from semcache_simulator.canned import canned_answer, cluster_of

FinishReason = Literal["stop", "length"]

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
_MESSAGE_OVERHEAD_TOKENS = 3  # role and framing of each chat message, as OpenAI counts them
_REPLY_PRIMING_TOKENS = 3  # the assistant reply header every chat prompt ends with
_ANSWER_TOKENS_MIN = 20
_ANSWER_TOKENS_MAX = 80
_QUESTION_CHARS_MAX = 60

_OPENERS = ("In practice,", "Broadly speaking,", "As a rule,", "In short,", "Put simply,")
_SUBJECTS = (
    "the main factor",
    "a careful design",
    "the underlying system",
    "each component",
    "the overall cost",
    "a simple approach",
    "the first step",
)
_VERBS = ("depends on", "comes down to", "benefits from", "is shaped by", "relies on")
_OBJECTS = (
    "clear requirements",
    "the available data",
    "consistent measurement",
    "a few tested assumptions",
    "the context of the question",
    "careful trade-offs",
    "how often it is used",
)


@dataclass(frozen=True)
class ChatMessage:
    """The part of a chat message that shapes an answer: its role and its text."""

    role: str
    text: str


@dataclass(frozen=True)
class Answer:
    """One generated answer, kept as its tokens so it can be streamed."""

    tokens: tuple[str, ...]
    finish_reason: FinishReason

    @property
    def text(self) -> str:
        """The whole answer, as a unary response carries it."""
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        """Tokens in the answer, as reported in `usage`."""
        return len(self.tokens)


def split_tokens(text: str) -> list[str]:
    """Cut `text` into tokens, each with its leading whitespace."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in `text` (words and punctuation marks)."""
    return len(split_tokens(text))


def chat_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens of a chat request: message texts plus a small fixed overhead."""
    text_tokens = sum(count_tokens(m.text) + _MESSAGE_OVERHEAD_TOKENS for m in messages)
    return text_tokens + _REPLY_PRIMING_TOKENS


def compose_answer(
    model: str,
    messages: Sequence[ChatMessage],
    max_tokens: int | None,
    canned: Mapping[str, str] | None = None,
) -> Answer:
    """The answer `model` gives to `messages`, cut to `max_tokens` if set.

    A last user question found in `canned` (normalised question -> cluster, see
    `semcache_simulator.canned`) gets its cluster's canned answer, whatever the model.
    Otherwise the text opens with the model name and the last user question, then
    adds filler sentences up to a length drawn from 20 to 80 tokens.
    """
    cluster = cluster_of(canned, _last_user_text(messages)) if canned else None
    if cluster is not None:
        tokens = split_tokens(canned_answer(cluster))
    else:
        tokens = _generated_tokens(model, messages)
    if max_tokens is not None and len(tokens) > max_tokens:
        return Answer(tuple(tokens[:max_tokens]), "length")
    return Answer(tuple(tokens), "stop")


def _generated_tokens(model: str, messages: Sequence[ChatMessage]) -> list[str]:
    rng = random.Random(_seed(model, messages))
    target_tokens = rng.randint(_ANSWER_TOKENS_MIN, _ANSWER_TOKENS_MAX)
    tokens = split_tokens(f"[{model}] Answer to: {_question_excerpt(messages)}")
    while True:
        tokens += split_tokens(" " + _filler_sentence(rng))
        if len(tokens) >= target_tokens:
            return tokens


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    users = [m for m in messages if m.role == "user"]
    return users[-1].text if users else ""


def _seed(model: str, messages: Sequence[ChatMessage]) -> int:
    payload = json.dumps(
        {"model": model, "messages": [[m.role, m.text] for m in messages]},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big")


def _question_excerpt(messages: Sequence[ChatMessage]) -> str:
    users = [m for m in messages if m.role == "user"] or list(messages)
    question = " ".join(users[-1].text.split()) if users else ""
    if not question:
        return "(an empty message)."
    if len(question) > _QUESTION_CHARS_MAX:
        question = question[:_QUESTION_CHARS_MAX].rsplit(" ", 1)[0] + "..."
    return question if question[-1] in ".?!" else question + "."


def _filler_sentence(rng: random.Random) -> str:
    subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
    if rng.random() < 0.5:
        return f"{subject.capitalize()} {verb} {obj}."
    return f"{rng.choice(_OPENERS)} {subject} {verb} {obj}."
