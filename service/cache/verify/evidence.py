"""Per-entry evidence: what exploration and feedback learned about one cached answer.

An `Observation` says that a query at guard score `score` (0..1) against this entry
deserved the same answer (`same=True`) or not. Each carries a unique `obs_id` (a
request id or uuid4), so evidence is a set: `merge` is the union, trimmed to the
`MAX_OBSERVATIONS` newest by `(at_s, obs_id)`. Union-then-trim is commutative,
associative and idempotent, so replicas that each add observations and merge in any
order, any number of times, end with the same set and lose nothing recent. Counts
would not merge that way: two replicas adding to the same counter from one read
lose an increment, and a replayed write counts twice.

How the store should persist it without lost updates: each observation under its own
payload key (or each replica under its own sub-map), never a read-modify-write of one
shared list; readers merge everything they find with `Evidence.merge`.
"""

from __future__ import annotations

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

    def to_payload(self) -> dict[str, Any]:
        """The JSON-friendly form the store keeps."""
        return {"at_s": self.at_s, "id": self.obs_id, "score": self.score, "same": self.same}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Observation:
        """Read back `to_payload`'s form.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        try:
            return cls(
                float(payload["at_s"]), str(payload["id"]), float(payload["score"]),
                bool(payload["same"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"bad observation payload {dict(payload)!r}: {error}") from error


def _newest(observations: Iterable[Observation], limit: int) -> frozenset[Observation]:
    unique = set(observations)
    if len(unique) <= limit:
        return frozenset(unique)
    return frozenset(sorted(unique, reverse=True)[:limit])


@dataclass(frozen=True)
class Evidence:
    """The bounded set of observations about one entry; immutable, merged by union."""

    observations: frozenset[Observation] = field(default_factory=frozenset)
    limit: int = MAX_OBSERVATIONS

    def add(self, observation: Observation) -> Evidence:
        """This evidence with `observation` added (and the oldest dropped past `limit`)."""
        return Evidence(_newest([*self.observations, observation], self.limit), self.limit)

    def merge(self, other: Evidence) -> Evidence:
        """The union of two replicas' evidence, trimmed to the newest `limit`."""
        limit = max(self.limit, other.limit)
        return Evidence(_newest(self.observations | other.observations, limit), limit)

    def worst_wrong_score(self) -> float | None:
        """The highest score at which the entry's answer was judged wrong, if any."""
        wrong = [o.score for o in self.observations if not o.same]
        return max(wrong) if wrong else None

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
