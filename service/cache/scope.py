"""Cache scope: everything besides the question's wording that changes the answer.

Two requests may share a cached answer only if their scopes are equal. The
scope is hashed into a fingerprint that every entry carries and every lookup
filters on, so no lookup can cross it: tenant, namespace, model (or "auto"
when the service chooses), the system prompt, each sampling parameter
(temperature, top_p, max_tokens, stop, response format, tools and tool
choice), the embedding model's id (vectors of two models never mix), the
upstream's identity (answers of one upstream are never served for another; see
`upstream_identity`), and whether the question leans on earlier turns.

Earlier turns enter in two ways. A question that stands alone ("How do I
reset my password?") is matched on its own, whatever came before it. A
follow-up ("cancel it") carries its conversation context (`conversation.context_text`):
the exact layer's id includes it, and a semantic match must also match the
context (see `SemanticCache`), so "cancel it" about a gym never gets the
answer about a streaming plan.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from service.cache.conversation import context_text, conversation_text
from service.domain import CompletionRequest

_WHITESPACE = re.compile(r"\s+")
# A "!" after a digit is a factorial ("5!" is not "5"); any other trailing ? ! . goes.
_TRAILING_PUNCTUATION = re.compile(r"(?:[\s?.。？]|(?<![0-9])[!！])+$")
# The closing marks `exact_form` may drop: after a word or number written right before
# them, and a "!" only after a word of two letters or more ("What is n!" and "5!" are
# factorials; "sudo !!" and the regex "a+b?" keep theirs).
_CLOSING = re.compile(r"[?.。？]+$")
_QUOTES = "'\"`"
_STRAIGHT_QUOTES = str.maketrans("\u2018\u2019\u201c\u201d", "''\"\"")
# The exact key's form changed (case and spacing kept): ids of the older form are not
# reused, so no entry stored under a case-folded key is served for another case.
EXACT_FORM_VERSION = 3  # 3: only a common first word loses its capital; "!" is kept
# Compatibility forms that carry meaning, kept as written: "3²" is not "32", "½" not "12".
_MEANINGFUL_FORMS = ("<super>", "<sub>", "<fraction>")
_POINT_NAMESPACE = uuid.UUID("5b1f5a52-8f0e-4c7e-9d1c-2f6d8f0b6c11")
SCOPE_VERSION = 3  # 3: the upstream identity entered the scope
# A follow-up's context changed in version 4 (every earlier turn, newest first): only
# follow-ups' scopes move, so standalone questions keep the entries already stored.
FOLLOW_UP_SCOPE_VERSION = 4
SIMULATOR_UPSTREAM_ID = "simulator"


@dataclass(frozen=True)
class CacheKey:
    """Where a request's answer lives: scope, matched text, context, exact-match id."""

    tenant: str
    namespace: str
    scope: str
    text: str
    context: str
    point_id: str


def normalise(text: str) -> str:
    """Case, Unicode form and width, whitespace and trailing punctuation do not change a
    question; superscripts, subscripts, fractions, "ß" and a factorial's "!" do."""
    folded = _compatible(text).lower()  # lower-cased, not case-folded ("Maße" / "masse")
    collapsed = _WHITESPACE.sub(" ", folded).strip()
    return _TRAILING_PUNCTUATION.sub("", collapsed)


def exact_form(text: str) -> str:
    """What must be equal for two texts to be the same question, exactly.

    Unicode compatibility forms and widths do not count (but for superscripts,
    subscripts and fractions), nor the capital of the text's first word when it is a
    common opening word ("What" and "what", "How", "Can"...), nor the case of the
    pronoun "I" in prose ("how do i"), nor spaces at the ends of a line or repeated
    between words outside quotes, nor a closing "?" or "." after a word. Everything else
    does (found from outside, all once served as the same question at P(wrong) 0): case
    inside a sentence ("ls -l" / "ls -L", "1 MB" / "1 Mb", "IT" / "it"), the capital
    of any other first word ("Turkey" / "turkey", "Polish" / "polish") or of a later
    line or sentence ("True = 1" / "true = 1"), "I" in code or maths ("print(I)"),
    line breaks and indentation (code, CSV), spaces inside quotes ('a  b'), a closing
    "!" ("sort!" / "sort", "ten!" / "ten"), and a closing mark after anything but a
    word ("sudo !!", "a+b?").
    """
    straight = _compatible(text).translate(_STRAIGHT_QUOTES)
    lines = unicodedata.normalize("NFC", straight).replace("\r\n", "\n").split("\n")
    kept = [_line_form(line) for line in lines]
    started = _first_word_uncapitalised("\n".join(kept).strip())
    if "I" in started and _is_prose(started):
        started = _PRONOUN_I.sub("i", started)
    return _unclosed(started) if started[-1:] in _CLOSING_MARKS else started


_CLOSING_MARKS = "?.。？"
# Only these first words lose their capital: the common ways a question or request
# opens. Any other may be a name ("Turkey", "Polish", "Mb"); "I" is the pronoun rule's.
_OPENING_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "calculate",
        "can",
        "check",
        "compare",
        "compute",
        "convert",
        "could",
        "create",
        "define",
        "describe",
        "did",
        "do",
        "does",
        "explain",
        "find",
        "fix",
        "for",
        "generate",
        "give",
        "has",
        "have",
        "help",
        "how",
        "if",
        "in",
        "is",
        "it",
        "list",
        "make",
        "may",
        "might",
        "my",
        "name",
        "of",
        "on",
        "please",
        "recommend",
        "should",
        "show",
        "solve",
        "suggest",
        "summarise",
        "summarize",
        "tell",
        "the",
        "there",
        "these",
        "this",
        "those",
        "to",
        "translate",
        "was",
        "we",
        "were",
        "what",
        "whats",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "write",
        "you",
        "your",
    }
)
# Text that reads as code or maths: the pronoun rule stays out of it.
_CODE_MARKS = frozenset("=()[]{}<>*+/\\;$_|`^%#@~\n")


def _is_prose(text: str) -> bool:
    return not any(mark in _CODE_MARKS for mark in text)


def _first_word_uncapitalised(text: str) -> str:
    """`text` with its first word uncapitalised, when that word opens a question."""
    match = _FIRST_WORD.match(text)
    if match is None or not _opens_a_question(match.group(0).strip()):
        return text
    return _uncapitalised(match) + text[match.end() :]


def _opens_a_question(word: str) -> bool:
    """A common English opening word, or a word of another script (whose names the
    list cannot know; its first word keeps the older rule)."""
    return word.lower() in _OPENING_WORDS or not word.isascii()


def _unclosed(text: str) -> str:
    """`text` without its closing marks, where they close a sentence (see `_CLOSING`)."""
    closing = _CLOSING.search(text)
    if closing is None:
        return text
    body = text[: closing.start()]
    last = body.rsplit(None, 1)[-1] if body.strip() else ""
    if not last or body[-1].isspace() or not last.isalnum():
        return text
    return body


# "I" is written "i" as often ("how do i reset it"): the pronoun's case does not count.
_PRONOUN_I = re.compile(r"\bI\b")
_FIRST_WORD = re.compile(r"(\s*)([^\W\d_])([^\W\d_]*)")


def _uncapitalised(match: re.Match[str]) -> str:
    """A sentence's first word without its capital, unless it is all capitals ("IT")."""
    space, first, rest = match.groups()
    if rest and rest.isupper():
        return match.group(0)
    return f"{space}{first.lower()}{rest}"


def _line_form(line: str) -> str:
    """One line: its indentation kept, its end trimmed, runs of spaces between words made
    one, but inside quotes."""
    body = line.lstrip(" \t")
    indent = line[: len(line) - len(body)]
    if "  " not in body and "\t" not in body:  # most lines: nothing to squeeze
        return indent + body.rstrip()
    out: list[str] = []
    quote = ""
    for index, char in enumerate(body.rstrip()):
        if char in _QUOTES and not _in_word(body, index):
            quote = "" if quote == char else (quote or char)
        if char in " \t" and not quote:
            if out and out[-1] == " ":
                continue
            char = " "
        out.append(char)
    return indent + "".join(out)


def _in_word(text: str, index: int) -> bool:
    """An apostrophe between two letters ("don't"), not a quote."""
    return 0 < index < len(text) - 1 and text[index - 1].isalpha() and text[index + 1].isalpha()


def _compatible(text: str) -> str:
    """NFKC but for `_MEANINGFUL_FORMS`, case kept."""
    if text.isascii():
        return text
    runs = itertools.groupby(
        text, lambda c: unicodedata.decomposition(c).startswith(_MEANINGFUL_FORMS)
    )
    return "".join(
        "".join(chars) if meaningful else unicodedata.normalize("NFKC", "".join(chars))
        for meaningful, chars in runs
    )


def upstream_identity(
    providers: Iterable[tuple[str, str]],
    named: str | None = None,
    simulated: bool = False,
    simulator_behind: bool = False,
) -> str:
    """Which upstream answers: "simulator" for the built-in simulator, else the
    operator's `named` identity, else a digest of every provider's (name, base URL);
    either of the last two marked as a simulator's when a provider answered as
    `semcache simulate-upstream` (`simulator_behind`, see `service.llm.simulator_probe`).

    The forms carry different prefixes, so no real upstream can share a simulator's
    identity, nor a named one a derived one.
    """
    if simulated:
        return SIMULATOR_UPSTREAM_ID
    if named:
        identity = f"named:{named}"
    else:
        canonical = sorted((name, url.rstrip("/")) for name, url in providers)
        digest = hashlib.sha256(json.dumps(canonical).encode()).hexdigest()
        identity = f"providers:{digest[:32]}"
    return f"simulator-at:{identity}" if simulator_behind else identity


def scope_fingerprint(
    request: CompletionRequest, embedding_model_id: str, context: str, upstream_id: str = ""
) -> str:
    """A stable hex digest of everything that must match besides the question's wording."""
    sampling = request.sampling
    parts = {
        "v": FOLLOW_UP_SCOPE_VERSION if context else SCOPE_VERSION,
        "tenant": request.tenant,
        "namespace": request.namespace,
        "model": request.model or "auto",
        "system": request.system_prompt,
        "follow_up": bool(context),
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop),
        "response_format": sampling.response_format,
        "tools": sampling.tools_json,
        "tool_choice": sampling.tool_choice,
        "embedding_model": embedding_model_id,
        "upstream": upstream_id,
    }
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _turns(request: CompletionRequest) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.messages if m.role != "system"]


def cache_key(
    request: CompletionRequest, embedding_model_id: str, upstream_id: str = ""
) -> CacheKey:
    """The key for `request`; equal questions (and contexts) in equal scopes share an id."""
    turns = _turns(request)
    text = conversation_text(turns)
    context = context_text(turns)
    scope = scope_fingerprint(request, embedding_model_id, context, upstream_id)
    exact = f"{scope}\x00{EXACT_FORM_VERSION}\x00{exact_form(text)}\x00{exact_form(context)}"
    point_id = str(uuid.uuid5(_POINT_NAMESPACE, exact))
    return CacheKey(request.tenant, request.namespace, scope, text, context, point_id)


_KEY_MEMO_SIZE = 10_000  # recent requests' cache keys kept (first in, first out)


class CacheKeys:
    """`cache_key` for one cache (one embedding model, one upstream), memoised.

    Computing a key (scope digest, conversation parse, uuid5) was a third of an exact
    hit's own time; the memo is keyed on exactly what the key depends on (messages,
    tenant, namespace, model, sampling), so a request id or deadline never splits it.
    """

    def __init__(self, embedding_model_id: str, upstream_id: str = "") -> None:
        self._model_id = embedding_model_id
        self._upstream_id = upstream_id
        self._memo: dict[tuple[object, ...], CacheKey] = {}

    def key_for(self, request: CompletionRequest) -> CacheKey:
        """The key for `request` (see `cache_key`)."""
        memo_key = (
            request.messages,
            request.tenant,
            request.namespace,
            request.model,
            request.sampling,
        )
        key = self._memo.get(memo_key)
        if key is None:
            key = cache_key(request, self._model_id, self._upstream_id)
            self._memo[memo_key] = key
            if len(self._memo) > _KEY_MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
        return key
