"""Rule-based routing: a small decision tree over prompt length and wording.

In order, the first branch that matches wins:

    1. long_prompt     over 1000 estimated tokens                  → large
    2. reasoning       "analyze", "compare", "step by step",
                       "explain why", "design", "prove", ...       → large
    3. medium_prompt   100 to 1000 estimated tokens                → medium
    4. open_task       "explain", "summarize", "write", "how do
                       I", "translate", ...                        → medium
    5. simple          "what is", "define", "list", a yes/no
                       question                                    → small
    6. short_prompt    anything else under 100 tokens              → small

Length is the whole prompt's, every message of a conversation counted (found
from outside: a 1,050-token document in a system message before "What is the
total?" went to the small model); the wording rules read the question.

Reasoning outranks length below 1000 tokens because a short hard question
still needs the strong model, and a long easy one rarely does. An open task
outranks a simple pattern: "explain what a closure is" is more than a lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.llm.catalogue import estimate_tokens

LONG_PROMPT_TOKENS = 1000
MEDIUM_PROMPT_TOKENS = 100


def _words(*phrases: str) -> re.Pattern[str]:
    alternatives = "|".join(phrases)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


_REASONING = _words(
    r"analy[sz]e",
    r"analysis",
    r"compare",
    r"contrast",
    r"trade-?offs?",
    r"step[- ]by[- ]step",
    r"explain why",
    r"why (?:does|do|is|are|did|would|should)",
    r"design",
    r"architect(?:ure)?",
    r"prove",
    r"proof",
    r"derive",
    r"evaluate",
    r"critique",
    r"debug",
    r"optimi[sz]e",
    r"pros and cons",
    r"implications?",
    r"strategy",
    r"plan (?:a|an|the|for|out)",
    r"reason(?:ing)? (?:about|through)",
    r"justify",
)
_SIMPLE = _words(
    r"what is",
    r"what's",
    r"what are",
    r"who (?:is|was|wrote|invented|discovered)",
    r"when (?:is|was|did)",
    r"where (?:is|was)",
    r"define",
    r"definition of",
    r"meaning of",
    r"list",
    r"name (?:a|an|the|some|three|five)",
    r"how many",
    r"convert",
    r"spell",
)
_YES_NO = re.compile(
    r"^\s*(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have)\b[^?]*\?\s*$",
    re.IGNORECASE,
)
_OPEN_TASK = _words(
    r"explain",
    r"describe",
    r"summari[sz]e",
    r"write",
    r"rewrite",
    r"draft",
    r"translate",
    r"how (?:do|does|can|to|should)",
    r"give (?:me )?(?:an? )?(?:example|overview|outline)",
    r"difference between",
    r"walk me through",
    r"outline",
    r"generate",
    r"implement",
)


@dataclass(frozen=True)
class RuleVerdict:
    """The tier a rule chose, the rule's name, and what it matched (for the reason)."""

    tier: str
    rule: str
    matched: str = ""


def classify(text: str, tokens: int | None = None) -> RuleVerdict:
    """Run the decision tree in the module docstring over `text`, the question; `tokens`
    is the whole prompt's length when it is more than the question (a conversation)."""
    tokens = _length(text, tokens)
    if long := _long(tokens):
        return long
    if match := _REASONING.search(text):
        return RuleVerdict("large", "reasoning", match.group(0).lower())
    if tokens >= MEDIUM_PROMPT_TOKENS:
        return RuleVerdict("medium", "medium_prompt", f"~{tokens} tokens")
    return _short_prompt(text)


def long_prompt(text: str, tokens: int | None = None) -> RuleVerdict | None:
    """The `long_prompt` verdict when `text`, or the whole prompt's `tokens` if more, is
    over 1000 estimated tokens, else None.

    Nearest-example routing defers to it: an embedding model reads only the
    first few hundred tokens, so it cannot see a prompt's length.
    """
    return _long(_length(text, tokens))


def _length(text: str, tokens: int | None) -> int:
    """The prompt's length in estimated tokens: the question's, or `tokens` if more."""
    return max(estimate_tokens(text), tokens or 0)


def _long(tokens: int) -> RuleVerdict | None:
    if tokens > LONG_PROMPT_TOKENS:
        return RuleVerdict("large", "long_prompt", f"~{tokens} tokens")
    return None


def _short_prompt(text: str) -> RuleVerdict:
    if match := _OPEN_TASK.search(text):
        return RuleVerdict("medium", "open_task", match.group(0).lower())
    if _YES_NO.match(text):
        return RuleVerdict("small", "simple", "yes/no question")
    if match := _SIMPLE.search(text):
        return RuleVerdict("small", "simple", match.group(0).lower())
    return RuleVerdict("small", "short_prompt", "")
