"""Per-entry evidence: what exploration and feedback learned about one cached answer.

An `Observation` says that a query at guard score `score` (0..1) against this entry
deserved the same answer (`same=True`) or not. Each carries a unique `obs_id` (a
request id or uuid4), so evidence is a set: `merge` is the union (one observation
per id, the newest), trimmed to the `MAX_OBSERVATIONS` newest by `(at_s, obs_id)`.
Union-then-trim is commutative,
associative and idempotent, so replicas that each add observations and merge in any
order, any number of times, end with the same set and lose nothing recent. Counts
would not merge that way: two replicas adding to the same counter from one read
lose an increment, and a replayed write counts twice.

How the store persists it without lost updates: each observation under its own
payload key (`store.evidence_key`), never a read-modify-write of one shared list;
readers gather every key they find into an `Evidence` (`Evidence.of`), and a writer
deletes only keys of observations outside the newest `MAX_OBSERVATIONS` it sees,
which no replica's merged view holds either (see `store.evidence_update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_OBSERVATIONS", "Evidence", "Observation"]

MAX_OBSERVATIONS = 32


@dataclass(frozen=True, order=True)
class Observation:
    """One judged comparison: a query at `score` got the same answer as the entry, or not."""

    at_s: float  # when it was judged (unix seconds); orders observations
    obs_id: str  # unique per observation: a request id or a uuid4
    score: float  # the guard's score (0..1) of the query against this entry
    same: bool  # the answer judge's verdict: True if the cached answer fits
    feedback: bool = False  # an application said so (SubmitFeedback), not the judge
    # The query's cosine against the entry, for feedback: a score is the guard's, and
    # a plain threshold (the guard turned off) scores the same query by its cosine.
    similarity: float | None = None

    def to_payload(self) -> dict[str, Any]:
        """The JSON-friendly form the store keeps (`fb` only on feedback, `sim` when known)."""
        payload: dict[str, Any] = {
            "at_s": self.at_s, "id": self.obs_id, "score": self.score, "same": self.same,
        }  # fmt: skip
        if self.feedback:
            payload["fb"] = True
        if self.similarity is not None:
            payload["sim"] = self.similarity
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Observation:
        """Read back `to_payload`'s form.

        Raises:
            ValueError: not a mapping, or a field is missing or of the wrong type (times
                and scores must be finite numbers, the id a string, `same` a bool).
        """
        if not isinstance(payload, Mapping):
            raise ValueError(f"bad observation payload {payload!r}: not a mapping")
        try:
            at_s, score = _finite(payload["at_s"]), _finite(payload["score"])
            obs_id, same = payload["id"], payload["same"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"bad observation payload {dict(payload)!r}: {error!r}") from error
        feedback = payload.get("fb", False)
        if not isinstance(obs_id, str) or not isinstance(same, bool):
            raise ValueError(f"bad observation payload {dict(payload)!r}: id or same")
        if not isinstance(feedback, bool):
            raise ValueError(f"bad observation payload {dict(payload)!r}: fb")
        try:
            similarity = _finite(payload["sim"]) if "sim" in payload else None
        except ValueError as error:
            raise ValueError(f"bad observation payload {dict(payload)!r}: sim") from error
        return cls(at_s, obs_id, score, same, feedback, similarity)


def _finite(value: object) -> float:
    """`value` as a float if it is a finite real number (not a bool).

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _newest(observations: Iterable[Observation], limit: int) -> frozenset[Observation]:
    """The newest `limit` observations, one per `obs_id` (the newest of each id's: a
    store may hand a float back a hair off, and feedback given twice for one request
    keeps the later verdict, as the store's one key per id does)."""
    by_id: dict[str, Observation] = {}
    for observation in observations:
        known = by_id.get(observation.obs_id)
        if known is None or observation > known:
            by_id[observation.obs_id] = observation
    unique = by_id.values()
    if len(unique) <= limit:
        return frozenset(unique)
    return frozenset(sorted(unique, reverse=True)[:limit])


@dataclass(frozen=True)
class Evidence:
    """The bounded set of observations about one entry; immutable, merged by union."""

    observations: frozenset[Observation] = field(default_factory=frozenset)
    limit: int = MAX_OBSERVATIONS

    @classmethod
    def of(cls, observations: Iterable[Observation], limit: int = MAX_OBSERVATIONS) -> Evidence:
        """The newest `limit` of `observations` (duplicates counted once)."""
        return cls(_newest(observations, limit), limit)

    def add(self, observation: Observation) -> Evidence:
        """This evidence with `observation` added (and the oldest dropped past `limit`)."""
        return Evidence(_newest([*self.observations, observation], self.limit), self.limit)

    def merge(self, other: Evidence) -> Evidence:
        """The union of two replicas' evidence, trimmed to the newest `limit`."""
        limit = max(self.limit, other.limit)
        return Evidence(_newest(self.observations | other.observations, limit), limit)

    def worst_wrong_score(self) -> float | None:
        """The highest score at which an application said the entry's answer was wrong.

        Only feedback counts: an answer judge's "wrong" is evidence for the entry's fit
        (a look-alike question judged wrong says little about a paraphrase at the same
        score from another direction), a user's thumbs-down is a verdict.
        """
        wrong = [o.score for o in self.observations if o.feedback and not o.same]
        return max(wrong) if wrong else None

    def judged_wrong_at(self, score: float, similarity: float | None) -> bool:
        """Whether an application said the answer was wrong for a query at least as close
        as one at guard `score` and cosine `similarity`, by either measure (a verdict
        given under the guard still holds when a plain threshold scores by cosine)."""
        # A float32 cosine of a text with itself can come out a hair above 1.0, and a
        # plain threshold scores by cosine: a verdict at 1.0 covers it (found from
        # outside: the condemned answer to the very question was served at 1.0000001).
        worst = self.worst_wrong_score()
        if worst is None:
            return False
        if worst >= min(score, 1.0):
            return True
        if similarity is None:
            return False
        wrong = [o.similarity for o in self.observations if o.feedback and not o.same]
        return any(s is not None and s >= min(similarity, 1.0) for s in wrong)

    def scores_and_labels(self) -> tuple[list[float], list[bool]]:
        """The observations' scores and verdicts, oldest first."""
        ordered = sorted(self.observations)
        return [o.score for o in ordered], [o.same for o in ordered]

    def to_payload(self) -> list[dict[str, Any]]:
        """The JSON-friendly form the store keeps, oldest first."""
        return [o.to_payload() for o in sorted(self.observations)]

    @classmethod
    def from_payload(cls, payload: Sequence[Mapping[str, Any]]) -> Evidence:
        """Read back `to_payload`'s form.

        Raises:
            ValueError: an observation is malformed.
        """
        return cls(_newest((Observation.from_payload(p) for p in payload), MAX_OBSERVATIONS))

    def __len__(self) -> int:
        return len(self.observations)
