"""What the cache learns after deciding: judged explorations and applications' feedback.

Each judgement or feedback becomes an `Observation` written to the entry's payload
in the store (`LookupStore.add_observations`: one key per observation, so replicas
sharing a Qdrant server never overwrite each other's), is added to the live
calibration of the entry's tenant (`online.LiveCalibration`, which moves that tenant's
prior and no other's), and is counted per (tenant, namespace) for `GetCacheStats`,
`/metrics` and the logs.

Feedback by `request_id` needs the response to have been served by this replica
recently (the newest `served_limit` are remembered); feedback by `entry_id` works
on any replica and judges the cached answer itself (score 1.0), which stops even
its exact repeats from being served until a fresh answer replaces it.

A served answer moves its tenant's prior and the counters once: a verdict sent
again by the same request id (or another verdict, a change of mind) replaces
its observation on the entry but is not learned again. Found from outside: one
tenant repeating CORRECT on a single hit 4,200 times moved the prior every
tenant's decisions used until another tenant's near misses were served; then,
with that closed, 200 verdicts on 200 distinct hits did the same, which is why
each tenant now learns alone (`VerifyState.calibrations`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import structlog

from service.cache.store import CacheEntry
from service.cache.verify.counters import VerificationCounters
from service.cache.verify.evidence import Observation
from service.cache.verify.judges import AnswerJudge, JudgeCharge, LlmJudge, judging_for
from service.cache.verify.verifier import Exploration, VerifyState
from service.domain import Feedback, FeedbackReceipt, FeedbackVerdict
from service.errors import InvalidRequestError, NotFoundError

__all__ = ["Learning", "ObservationStore"]

log = structlog.get_logger(__name__)

_SERVED_LIMIT = 100_000
_CLOSE_WAIT_S = 2.0


class ObservationStore(Protocol):
    """The part of the store learning writes to and reads from."""

    async def get(self, point_id: str) -> CacheEntry | None: ...

    async def add_observations(self, items: Sequence[tuple[str, Observation]]) -> None: ...


class _Served(NamedTuple):  # one per answer with an entry: a tuple is quickest made
    tenant: str
    namespace: str
    entry_id: str
    score: float  # the guard score it was served at (1.0: exact, or the answer itself)
    judged: bool = False  # a verdict on it has been counted (the prior learns it once)
    answer: int = 0  # hash of what was served, to tell if the entry was replaced since
    similarity: float = 1.0  # the cosine it was served at (1.0 where the score is)


_REUSED = _Served("", "", "", 0.0)  # a request id that named two answers of one tenant


class Learning:
    """Judges explorations, takes feedback, and keeps the counters (see the module docstring)."""

    def __init__(
        self,
        state: VerifyState,
        store: ObservationStore,
        judge: AnswerJudge | None,
        *,
        clock: Callable[[], float] = time.time,
        served_limit: int = _SERVED_LIMIT,
    ) -> None:
        self.state = state
        self.judge = judge
        self._store = store
        self._clock = clock
        self._served: OrderedDict[tuple[str, str], _Served] = OrderedDict()  # (tenant, id)
        self._served_limit = served_limit
        self._tasks: set[asyncio.Task[None]] = set()

    def charge_judge_calls(self, charge: JudgeCharge) -> None:
        """Book the judge's own upstream calls (an `llm` judge's) with `charge`."""
        if isinstance(self.judge, LlmJudge):
            self.judge.charge = charge

    def judge_later(self, exploration: Exploration, fresh: str) -> None:
        """Judge `fresh` against the explored candidate in the background."""
        task = asyncio.get_running_loop().create_task(self._judge(exploration, fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _judge(self, exploration: Exploration, fresh: str) -> None:
        if self.judge is None:
            return
        judging_for.set(exploration.tenant)  # this task's own context: its judge calls' payer
        try:
            same = await self.judge.same(exploration.question, exploration.cached_content, fresh)
        except Exception as error:
            log.warning("answer judge failed; nothing recorded", error=repr(error))
            return
        if same is None:
            return
        counters = self.state.counters_for(exploration.tenant, exploration.namespace)
        counters.judged_same += int(same)
        counters.judged_wrong += int(not same)
        counters.audit_wrong += int(exploration.audit and not same)
        observation = Observation(self._clock(), exploration.obs_id, exploration.score, same)
        await self._record(exploration.tenant, exploration.point_id, observation)
        self._log_judged(exploration, same, counters)

    async def _record(self, tenant: str, point_id: str, observation: Observation) -> None:
        """Learn `observation` (`tenant`'s live prior) and keep it on the entry."""
        if observation.score < 1.0:
            self.state.calibrations.add(tenant, observation.score, observation.same)
        await self._keep(point_id, observation)

    async def _keep(self, point_id: str, observation: Observation) -> None:
        try:
            await self._store.add_observations([(point_id, observation)])
        except Exception as error:
            log.warning("evidence not stored", entry_id=point_id, error=repr(error))

    def _log_judged(
        self, exploration: Exploration, same: bool, counters: VerificationCounters
    ) -> None:
        audited, low, high = counters.audited_error_rate()
        log.info(
            "cache candidate judged",
            tenant=exploration.tenant,
            namespace=exploration.namespace,
            entry_id=exploration.point_id,
            score=round(exploration.score, 4),
            p_wrong=round(exploration.p_wrong, 4),
            audit=exploration.audit,
            same=same,
            judge=self.judge.name if self.judge is not None else "",
            expected_error_rate=round(counters.expected_error_rate, 5),
            audited_error_rate=round(audited, 5),
            audited_error_rate_ci95=(round(low, 5), round(high, 5)),
        )

    def note_served(
        self,
        request_id: str,
        tenant: str,
        namespace: str,
        entry_id: str,
        score: float,
        answer: tuple[str, str] = ("", ""),
        similarity: float = 1.0,
    ) -> None:
        """Remember which entry answered `request_id`, at which score and cosine, and what
        it said (`answer`: content and tool calls), for feedback."""
        if not request_id or not entry_id:
            return
        key = (tenant, request_id)
        earlier = self._served.get(key)
        if earlier is not None and earlier.entry_id != entry_id:
            # The caller reused its request id for another answer: feedback by that id
            # could mean either, so it is refused until the id drops out.
            self._served[key] = _REUSED
        else:
            self._served[key] = _Served(
                tenant, namespace, entry_id, score, answer=hash(answer), similarity=similarity
            )
        self._served.move_to_end(key)
        if len(self._served) > self._served_limit:
            self._served.popitem(last=False)

    async def feedback(self, feedback: Feedback) -> FeedbackReceipt:
        """Record an application's verdict on an answer; see the module docstring.

        Raises:
            InvalidRequestError: neither id was sent, or they name different entries.
            NotFoundError: the request id was not served here recently, or the entry
                does not exist (or is another tenant's).
        """
        served = self._served_for(feedback)
        entry_id = feedback.entry_id or (served.entry_id if served is not None else "")
        entry = await self._store.get(entry_id)
        if entry is None or entry.tenant != feedback.tenant:
            raise NotFoundError(f"no cache entry {entry_id!r}: it was deleted, or never stored")
        if served is not None and served.answer != hash((entry.content, entry.tool_calls_json)):
            raise NotFoundError(
                f"the answer served for request_id {feedback.request_id[:64]!r} has since been"
                f" replaced in entry {entry_id}; the verdict would judge the new one, so nothing"
                " was recorded"
            )
        same = feedback.verdict is FeedbackVerdict.CORRECT
        score = served.score if served is not None else 1.0
        similarity = served.similarity if served is not None else 1.0
        obs_id = f"fb-{feedback.request_id or uuid.uuid4().hex}"
        observation = Observation(self._clock(), obs_id, score, same, True, similarity)
        if served is not None and served.judged:
            await self._keep(entry_id, observation)  # the latest verdict; learned once
        else:
            if served is not None:
                self._served[(feedback.tenant, feedback.request_id)] = served._replace(judged=True)
            counters = self.state.counters_for(entry.tenant, entry.namespace)
            counters.feedback_correct += int(same)
            counters.feedback_wrong += int(not same)
            await self._record(entry.tenant, entry_id, observation)
        log.info(
            "feedback recorded", tenant=entry.tenant, entry_id=entry_id, score=score, same=same
        )
        return FeedbackReceipt(entry_id, score)

    def _served_for(self, feedback: Feedback) -> _Served | None:
        if not feedback.entry_id and not feedback.request_id:
            raise InvalidRequestError("send the entry_id or the request_id of a response")
        if not feedback.request_id:
            return None
        served = self._served.get((feedback.tenant, feedback.request_id))
        if served is _REUSED:
            if feedback.entry_id:
                return None  # judge the entry itself
            raise InvalidRequestError(
                f"request_id {feedback.request_id[:64]!r} was sent with more than one request"
                " that got a different answer; send the response's entry_id instead"
            )
        if served is None:
            if feedback.entry_id:
                return None  # judge the entry itself
            raise NotFoundError(
                f"request_id {feedback.request_id[:64]!r} names no cached answer this replica"
                " served recently: it was served by another replica or long ago (send the"
                " response's entry_id instead), or its answer was never stored (a bypass,"
                " no-store, or an answer that may not be cached: its response has no"
                " entry_id, and there is nothing to judge)"
            )
        if feedback.entry_id and feedback.entry_id != served.entry_id:
            raise InvalidRequestError(
                "entry_id and request_id name different entries; send one of them"
            )
        return served

    def counters(self, tenant: str) -> list[tuple[str, VerificationCounters]]:
        """Copies of `tenant`'s counters, one per namespace, sorted by namespace."""
        return self.state.counters.of_tenant(tenant)

    def snapshot(self) -> dict[tuple[str, str], VerificationCounters]:
        """Copies of every (tenant, namespace)'s counters (for the metrics endpoint)."""
        return self.state.counters.snapshot()

    async def aclose(self) -> None:
        """Let judgements in flight finish (briefly), then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT_S)
        for task in pending:
            task.cancel()
