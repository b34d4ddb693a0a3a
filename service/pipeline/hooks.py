"""What the request path tells verification after answering (see `verify.learning`)."""

from __future__ import annotations

from service.cache.semantic import Lookup
from service.cache.verify.learning import Learning
from service.cache.verify.verifier import SAME_QUESTION_DETAILS
from service.domain import Completion, CompletionRequest
from service.llm.provider import ProviderAnswer

__all__ = ["LearningHooks"]


class LearningHooks:
    """Hands explorations to the judge and remembers who answered what, for feedback.

    With no `Learning` (a pipeline built without verification) both do nothing.
    """

    def __init__(self, learning: Learning | None) -> None:
        self._learning = learning

    def judge_later(self, lookup: Lookup | None, answer: ProviderAnswer) -> None:
        """An explored candidate is judged against `answer` in the background."""
        if self._learning is not None and lookup is not None and lookup.exploration:
            self._learning.judge_later(lookup.exploration, answer.content)

    def noted(
        self, request: CompletionRequest, completion: Completion, lookup: Lookup | None
    ) -> Completion:
        """Remember which entry answered the request, for feedback by request id.

        The score is the guard's for a semantic hit, 1.0 for an exact hit or a stored
        answer (feedback on those judges the answer itself), and 1.0 for a hit served as
        the same question in other words (`identical`, `same_form`): a WRONG on one form
        judges the answer for every form of it (found from outside: WRONG on "How can I
        …" left "How to …" served the condemned answer at P(wrong) 0, its score being
        higher than the verdict's).
        """
        if self._learning is not None and completion.entry_id:
            hit = lookup.hit if lookup is not None else None
            score, similarity = 1.0, 1.0
            if hit is not None and hit.detail not in SAME_QUESTION_DETAILS:
                score, similarity = hit.score, hit.similarity
            self._learning.note_served(
                request.request_id, request.tenant, request.namespace, completion.entry_id, score,
                answer=(completion.content, completion.tool_calls_json), similarity=similarity,
            )  # fmt: skip
        return completion
