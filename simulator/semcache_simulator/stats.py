"""Counts of the requests the simulator received, served at `GET /sim/stats`."""

from __future__ import annotations

from collections import Counter
from typing import Any


class RequestStats:
    """Request counters, so tests can prove how often the upstream was called.

    `by_endpoint` counts every authenticated request to a `/v1` endpoint, valid
    or not. `by_model`, `total` and `prompts_total` count only the requests
    that reached a model (a valid body naming a served model), faulted ones
    included: that is the upstream work a cache exists to avoid. A legacy
    completions request with several prompts counts once in `total` and once
    per prompt in `prompts_total`.
    """

    def __init__(self) -> None:
        self._by_endpoint: Counter[str] = Counter()
        self._by_model: Counter[str] = Counter()
        self._prompts_total = 0

    def record_endpoint(self, endpoint: str) -> None:
        """Count one request that arrived at `endpoint`."""
        self._by_endpoint[endpoint] += 1

    def record_model_call(self, model: str, prompts: int) -> None:
        """Count one request that reached `model` with `prompts` prompts."""
        self._by_model[model] += 1
        self._prompts_total += prompts

    def model_calls(self, model: str | None = None) -> int:
        """Requests that reached `model`, or any model when None."""
        if model is None:
            return sum(self._by_model.values())
        return self._by_model[model]

    def snapshot(self) -> dict[str, Any]:
        """The counters as the JSON body of `/sim/stats`."""
        return {
            "total": self.model_calls(),
            "prompts_total": self._prompts_total,
            "by_endpoint": dict(self._by_endpoint),
            "by_model": dict(self._by_model),
        }

    def reset(self) -> None:
        """Zero every counter."""
        self._by_endpoint.clear()
        self._by_model.clear()
        self._prompts_total = 0
