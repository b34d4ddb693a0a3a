"""An OpenAI-compatible upstream simulator, so the service runs offline.

`UpstreamSimulator` is a real aiohttp server speaking the OpenAI wire format
(chat completions unary and streamed, legacy completions, models), with
deterministic answers, per-model latency and price, and reproducible fault
injection. The service reaches it through `openai.AsyncOpenAI`, exactly as it
reaches a real provider.
"""

from service.simulator.answers import count_tokens
from service.simulator.app import UpstreamSimulator, serve_forever
from service.simulator.canned import load_answer_stream
from service.simulator.config import (
    ANY_MODEL,
    FaultConfig,
    ModelProfile,
    SimulatorConfig,
    default_models,
    parse_fault_spec,
)
from service.simulator.stats import RequestStats

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
