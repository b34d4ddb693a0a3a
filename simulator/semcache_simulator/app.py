"""The simulator's lifecycle: start, stop, address, counters, and the CLI loop.

The routes themselves live in `semcache_simulator.routes`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import structlog
from aiohttp import web

from semcache_simulator.config import SimulatorConfig
from semcache_simulator.faults import FaultPlanner
from semcache_simulator.routes import create_app
from semcache_simulator.stats import RequestStats

_SHUTDOWN_TIMEOUT_S = 1.0  # a simulator holds nothing worth waiting long for on stop


class UpstreamSimulator:
    """An OpenAI-compatible HTTP server with simulated models, for offline runs.

    Point `openai.AsyncOpenAI(base_url=sim.base_url)` at it. Use it as an
    async context manager, or call `start` and `stop`.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.stats = RequestStats()
        self._planner = FaultPlanner(self.config)
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port`; port 0 picks a free port (see `port`).

        Raises:
            RuntimeError: the simulator is already running.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the simulator is already running; stop it first")
        app = create_app(self.config, self.stats, self._planner)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._host = runner, host
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and close open connections; a no-op when not running."""
        if self._runner is not None:
            runner, self._runner, self._port = self._runner, None, None
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The port it listens on.

        Raises:
            RuntimeError: the simulator is not running.
        """
        if self._port is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:43123/v1`.

        Raises:
            RuntimeError: the simulator is not running.
        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    def request_count(self, model: str | None = None) -> int:
        """Chat and completions requests that reached `model` (any model when None)."""
        return self.stats.model_calls(model)

    def reset(self) -> None:
        """Zero the counters and restart the fault sequence, like `POST /sim/reset`."""
        self.stats.reset()
        self._planner.reset()

    async def __aenter__(self) -> UpstreamSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Run a simulator on `host:port` until cancelled, logging its base URL.

    Raises:
        OSError: the address cannot be bound.
    """
    simulator = UpstreamSimulator(config)
    await simulator.start(host, port)
    try:
        structlog.get_logger(__name__).info(
            "upstream simulator listening",
            base_url=simulator.base_url,
            models=sorted(config.models),
        )
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
