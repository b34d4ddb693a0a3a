"""Answer judges: is a cached answer as good as the fresh one the upstream just gave?

An exploration sends a request upstream although a cached candidate was found,
then asks a judge whether the candidate's answer and the fresh answer are the
same. `build_judge` picks one from `SEMCACHE_JUDGE`:

- `exact`: equal after normalising (case, whitespace, surrounding punctuation);
  for deterministic upstreams (the simulator answering from a labelled stream).
- `embedding`: the two answers' cosine, through the service's embedder, reaches
  `SEMCACHE_JUDGE_SIMILARITY_MIN`.
- `llm`: a yes/no question (`judge_prompt.txt`) to `SEMCACHE_JUDGE_MODEL`, or the
  cheapest catalogue model, at temperature 0.

`same` returns None when it cannot tell (the embedder or the upstream failed, or
the model did not answer yes or no): the caller records nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import lru_cache
from importlib import resources
from typing import Protocol

import numpy as np
import structlog

from service.config import Settings
from service.domain import ChatMessage, SamplingParams
from service.embedding.batcher import EmbeddingBatcher
from service.llm.catalogue import Catalogue, ModelSpec
from service.llm.provider import Provider, ProviderAnswer, ProviderCall

__all__ = [
    "AnswerJudge",
    "EmbeddingJudge",
    "ExactJudge",
    "LlmJudge",
    "build_judge",
    "cheapest_model",
    "judge_prompt",
    "normalise_answer",
    "parse_yes_no",
]

log = structlog.get_logger(__name__)

# The tenant whose exploration a judge is judging (set by `Learning` in the judging task):
# an `llm` judge's call is that tenant's spend and counts against its token limit.
judging_for: ContextVar[str] = ContextVar("judging_for", default="")
JudgeCharge = Callable[[str, ProviderAnswer], Awaitable[None]]

_WHITESPACE = re.compile(r"\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")
_WORD = re.compile(r"[a-z]+")
_VERDICTS = {"yes": True, "no": False}
_VERDICT_WINDOW = 3  # a verdict must come within the reply's first words ("Answer: yes")
# A nominal judge call (a prompt of two answers, a one-word reply) to rank prices by.
_NOMINAL_PROMPT_TOKENS = 400
_NOMINAL_COMPLETION_TOKENS = 4
_JUDGE_MAX_TOKENS = 4
_JUDGE_TIMEOUT_S = 30.0


class AnswerJudge(Protocol):
    """Compares a fresh upstream answer with the cached one for the same question."""

    name: str

    async def same(self, question: str, cached: str, fresh: str) -> bool | None:
        """True if `cached` answers `question` as well as `fresh`; None if it cannot tell."""
        ...


def normalise_answer(text: str) -> str:
    """Casefolded, whitespace collapsed, punctuation and whitespace stripped at both ends."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _EDGE.sub("", _WHITESPACE.sub(" ", folded).strip())


class ExactJudge:
    """The same answer when both are equal after `normalise_answer`."""

    name = "exact"

    async def same(self, question: str, cached: str, fresh: str) -> bool | None:
        """Equal after normalising; never None."""
        return normalise_answer(cached) == normalise_answer(fresh)


class EmbeddingJudge:
    """The same answer when the answers' cosine reaches `similarity_min`."""

    name = "embedding"

    def __init__(self, embedder: EmbeddingBatcher, similarity_min: float) -> None:
        self._embedder = embedder
        self.similarity_min = similarity_min

    async def same(self, question: str, cached: str, fresh: str) -> bool | None:
        """Cosine of the two answers' vectors >= `similarity_min`; None if embedding failed."""
        if normalise_answer(cached) == normalise_answer(fresh):
            return True
        try:
            first = await self._embedder.embed(cached)
            second = await self._embedder.embed(fresh)
        except Exception as error:  # the embedder's failure: no verdict, nothing recorded
            log.warning("embedding judge could not embed an answer", error=repr(error))
            return None
        return cosine(first, second) >= self.similarity_min


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    """Cosine of two vectors (0.0 when either is all zeros)."""
    norms = float(np.linalg.norm(first)) * float(np.linalg.norm(second))
    return float(np.dot(first, second)) / norms if norms > 0 else 0.0


@lru_cache(maxsize=1)
def judge_prompt() -> str:
    """The `llm` judge's prompt template (`{question}`, `{cached}`, `{fresh}`)."""
    return resources.files(__package__).joinpath("judge_prompt.txt").read_text(encoding="utf-8")


def parse_yes_no(reply: str) -> bool | None:
    """True for a yes, False for a no, None for anything else.

    The first "yes" or "no" among the reply's first three words
    decides, whatever the case or punctuation: "Yes.", "**No**", "Answer: yes".
    """
    for word in _WORD.findall(reply.casefold())[:_VERDICT_WINDOW]:
        if word in _VERDICTS:
            return _VERDICTS[word]
    return None


class LlmJudge:
    """Asks `model` whether the two answers are the same, at temperature 0.

    `charge(tenant, answer)`, once set, books each call's answer to the tenant being
    judged for (`judging_for`): found from outside, the judge's calls were counted in no
    tenant's spend, no token figure and no token limit.
    """

    name = "llm"

    def __init__(self, provider: Provider, model: str, timeout_s: float = _JUDGE_TIMEOUT_S) -> None:
        self._provider = provider
        self.model = model
        self._timeout_s = timeout_s
        self.charge: JudgeCharge | None = None

    def call(self, question: str, cached: str, fresh: str) -> ProviderCall:
        """The upstream call that asks the yes/no question."""
        prompt = judge_prompt().format(question=question, cached=cached, fresh=fresh)
        return ProviderCall(
            model=self.model,
            messages=(ChatMessage("user", prompt),),
            sampling=SamplingParams(temperature=0.0, max_tokens=_JUDGE_MAX_TOKENS),
            timeout_s=self._timeout_s,
        )

    async def same(self, question: str, cached: str, fresh: str) -> bool | None:
        """The model's yes or no; None (logged) on an upstream error or any other reply."""
        try:
            answer = await self._provider.complete(self.call(question, cached, fresh))
        except Exception as error:  # any upstream failure: no verdict, nothing recorded
            log.warning("llm judge call failed", model=self.model, error=repr(error))
            return None
        if self.charge is not None:
            await self.charge(judging_for.get(), answer)
        verdict = parse_yes_no(answer.content)
        if verdict is None:
            log.warning("llm judge gave no yes or no", model=self.model, reply=answer.content[:80])
        return verdict


def cheapest_model(catalogue: Catalogue) -> ModelSpec:
    """The model a nominal judge call costs least on (file order breaks ties)."""
    models = list(catalogue.models.values())
    return min(
        models,
        key=lambda m: m.price.cost_usd(_NOMINAL_PROMPT_TOKENS, _NOMINAL_COMPLETION_TOKENS),
    )


def build_judge(
    settings: Settings, embedder: EmbeddingBatcher, provider: Provider, catalogue: Catalogue
) -> AnswerJudge:
    """The judge `SEMCACHE_JUDGE` names.

    Raises:
        UnknownModelError: `SEMCACHE_JUDGE_MODEL` is not in the catalogue (`llm` judge).
    """
    if settings.judge == "exact":
        return ExactJudge()
    if settings.judge == "embedding":
        return EmbeddingJudge(embedder, settings.judge_similarity_min)
    if settings.judge_model is not None:
        model = catalogue.require_model(settings.judge_model).name
    else:
        model = cheapest_model(catalogue).name
    return LlmJudge(provider, model)
