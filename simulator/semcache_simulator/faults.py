"""Reproducible fault decisions, one per request.

The n-th request to a model draws its fate from a `random.Random` seeded with
SHA-256 of (seed, model, n). The same seed and the same per-model request
order therefore give the same faults in every run, and one model's traffic
never shifts another model's faults.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from semcache_simulator.config import SimulatorConfig

Outcome = Literal["answer", "server_error", "rate_limited"]

_DISCONNECT_AFTER_CHUNKS_MAX = 3


@dataclass(frozen=True)
class FaultPlan:
    """What happens to one request.

    `disconnect_after_chunks` is the number of content chunks a stream sends
    before its connection is dropped, or None to finish normally.
    """

    outcome: Outcome
    retry_after_s: float
    spike_ms: float
    disconnect_after_chunks: int | None


class FaultPlanner:
    """Draws a `FaultPlan` per request from the configured fault rates."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._requests_by_model: Counter[str] = Counter()

    def plan(self, model: str) -> FaultPlan:
        """The fate of the next request to `model`."""
        faults = self._config.faults_for(model)
        ordinal = self._requests_by_model[model]
        self._requests_by_model[model] += 1
        rng = random.Random(self._seed(model, ordinal))
        # Every draw is made whatever the rates, so changing one rate never
        # reshuffles the decisions that depend on the others.
        status_draw, spike_draw, disconnect_draw = rng.random(), rng.random(), rng.random()
        chunks_before_drop = rng.randint(1, _DISCONNECT_AFTER_CHUNKS_MAX)
        outcome: Outcome = "answer"
        if status_draw < faults.rate_limit_rate:
            outcome = "rate_limited"
        elif status_draw < faults.rate_limit_rate + faults.error_rate:
            outcome = "server_error"
        return FaultPlan(
            outcome=outcome,
            retry_after_s=faults.retry_after_s,
            spike_ms=faults.spike_ms if spike_draw < faults.spike_rate else 0.0,
            disconnect_after_chunks=(
                chunks_before_drop if disconnect_draw < faults.disconnect_rate else None
            ),
        )

    def reset(self) -> None:
        """Restart every model's request sequence, as after a fresh start."""
        self._requests_by_model.clear()

    def _seed(self, model: str, ordinal: int) -> int:
        key = f"{self._config.seed}:{model}:{ordinal}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
