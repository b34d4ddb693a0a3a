"""The bound on calls in flight, shared by the gRPC and HTTP doors.

Past `SEMCACHE_MAX_CONCURRENT_RPCS` calls being served, a new call of the
cache service is refused at once (`OverloadedError`: gRPC RESOURCE_EXHAUSTED
with a RetryInfo, HTTP 503 with Retry-After), logged and counted, instead of
queueing behind work the event loop cannot keep up with. Probes (gRPC health
and reflection; HTTP `/live` and the model list) are never refused. See the
README, "Overload".
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import structlog

from service.errors import OverloadedError
from service.metrics import Metrics

log = structlog.get_logger(__name__)

# How many calls may be in flight at once when the caller does not say: above the
# 320 misses one default catalogue provider admits (64 running, 256 queued), so
# its own limit refuses misses first; a 2,000-stream burst on 2 cores with a 2 s
# upstream peaked at about 480 in flight (README, "Overload").
DEFAULT_MAX_IN_FLIGHT = 512
# An overloaded server asks callers to come back after about this long; the
# jitter (±50%) keeps refused callers from returning all at once.
OVERLOAD_RETRY_AFTER_S = 1.0
OVERLOAD_LOG_INTERVAL_S = 10.0


class InFlight:
    """Counts the calls in flight and refuses one past `limit` (`OverloadedError`).

    One gate serves both doors: `semcache serve` hands the same one to the
    gRPC interceptor and the HTTP middleware, so the bound is the process's.

    Refusals are counted one by one (`semcache_overloaded_total`) but logged as
    a warning at most once per `OVERLOAD_LOG_INTERVAL_S`, with how many there were.
    """

    def __init__(
        self,
        limit: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the bound on calls in flight must be at least 1, got {limit}")
        self.limit = limit
        self.count = 0
        self._metrics = metrics
        self._clock = clock
        self._unlogged_refusals = 0
        self._logged_at = -math.inf
        if metrics is not None:
            # read at each scrape: cheaper than publishing twice per RPC
            metrics.watch_rpcs_in_flight(lambda: self.count)

    def enter(self, rpc: str) -> None:
        """Take a slot for one call of `rpc` (its metrics label).

        Raises:
            OverloadedError: `limit` calls are in flight already.
        """
        if self.count >= self.limit:
            self._refuse(rpc)
        self.count += 1

    def leave(self) -> None:
        """Give back the slot `enter` took."""
        self.count -= 1

    def _refuse(self, rpc: str) -> None:
        self._unlogged_refusals += 1
        if self._metrics is not None:
            self._metrics.record_overloaded(rpc)
        now = self._clock()
        if now - self._logged_at >= OVERLOAD_LOG_INTERVAL_S:
            log.warning(
                "server overloaded: refusing new calls (gRPC RESOURCE_EXHAUSTED, HTTP 503)",
                max_concurrent_rpcs=self.limit,
                refused=self._unlogged_refusals,
                hint="raise SEMCACHE_MAX_CONCURRENT_RPCS if the machine has room, or add replicas",
            )
            self._logged_at, self._unlogged_refusals = now, 0
        retry_after_s = OVERLOAD_RETRY_AFTER_S * random.uniform(0.5, 1.5)
        raise OverloadedError(self.limit, retry_after_s)
