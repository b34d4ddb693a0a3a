"""An OpenAI-compatible upstream simulator, so the service runs offline.

`UpstreamSimulator` is a real aiohttp server speaking the OpenAI wire format
(chat completions unary and streamed, legacy completions, models), with
deterministic answers, per-model latency and price, and reproducible fault
injection. The service reaches it through `openai.AsyncOpenAI`, exactly as it
reaches a real provider.

A distribution of its own (`semcache-simulator`, in `simulator/`): the server's
wheel leaves it out, and `semcache serve` imports it only under `--simulate`.
"""

from semcache_simulator.answers import count_tokens
from semcache_simulator.app import UpstreamSimulator, serve_forever
from semcache_simulator.canned import load_answer_stream
from semcache_simulator.config import (
    ANY_MODEL,
    FaultConfig,
    ModelProfile,
    SimulatorConfig,
    default_models,
    parse_fault_spec,
)
from semcache_simulator.stats import RequestStats

__all__ = [
    "ANY_MODEL",
    "FaultConfig",
    "ModelProfile",
    "RequestStats",
    "SimulatorConfig",
    "UpstreamSimulator",
    "count_tokens",
    "default_models",
    "load_answer_stream",
    "parse_fault_spec",
    "serve_forever",
]
