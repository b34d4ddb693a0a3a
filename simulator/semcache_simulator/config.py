"""Typed settings of the upstream simulator: models, latencies and faults.

Everything here is a frozen value checked on construction, so a bad setting
fails when the simulator is built, not in the middle of a benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from service.llm.pricing import DEFAULT_PRICES, ModelPrice

ANY_MODEL = "*"
"""Key of `SimulatorConfig.faults` that applies to every model without its own entry."""

_RATE_FIELDS = ("error_rate", "rate_limit_rate", "spike_rate", "disconnect_rate")
_DURATION_FIELDS = ("retry_after_s", "spike_ms")


@dataclass(frozen=True)
class FaultConfig:
    """How often, and how, one model misbehaves.

    Rates are fractions of requests in [0, 1]. A request is answered 429
    (`rate_limit_rate`) or 500 (`error_rate`) before any latency is spent, so
    the two rates must not sum past 1. `spike_rate` adds `spike_ms` to the
    time to first token; `disconnect_rate` drops a streaming connection after
    a few chunks, without a finish chunk or `[DONE]` (unary answers ignore it).

    Raises:
        ValueError: a rate outside [0, 1], a negative or non-finite duration,
            or `error_rate + rate_limit_rate > 1`.
    """

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    disconnect_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
        for name in _DURATION_FIELDS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.error_rate + self.rate_limit_rate > 1.0:
            raise ValueError(
                "error_rate + rate_limit_rate must not exceed 1, got "
                f"{self.error_rate} + {self.rate_limit_rate}"
            )


@dataclass(frozen=True)
class ModelProfile:
    """One simulated model: its price and its default latency."""

    price: ModelPrice
    ttft_ms: float
    ms_per_token: float


_DEFAULT_TTFT_MS = 300.0
_DEFAULT_MS_PER_TOKEN = 10.0
# The small model is fast, the strong model slow; figures are typical of the
# public APIs, not measurements.
_DEFAULT_LATENCIES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (150.0, 5.0),
    "claude-3-5-haiku": (250.0, 8.0),
    "gpt-4o": (400.0, 15.0),
}


def default_models() -> dict[str, ModelProfile]:
    """The models served by default: `DEFAULT_PRICES`, each with a plausible latency."""
    return {
        name: ModelProfile(price, *_DEFAULT_LATENCIES.get(name, _default_latency()))
        for name, price in DEFAULT_PRICES.items()
    }


def _default_latency() -> tuple[float, float]:
    return (_DEFAULT_TTFT_MS, _DEFAULT_MS_PER_TOKEN)


@dataclass(frozen=True)
class SimulatorConfig:
    """Settings of one `UpstreamSimulator`.

    `ttft_ms` and `ms_per_token`, when set, override every model's own latency
    (tests and benchmarks set both to 0). `faults` maps a model name, or `"*"`
    for every other model, to its faults. `seed` makes fault injection
    reproducible; answers depend only on model and messages, never on it.
    `api_key`, when set, is required as `Authorization: Bearer <key>`. `answers`
    maps normalised questions to intent clusters (`canned.load_answer_stream`):
    those questions get their cluster's canned answer.

    Raises:
        ValueError: a negative latency, no models, or a fault entry naming a
            model the simulator does not serve.
    """

    ttft_ms: float | None = None
    ms_per_token: float | None = None
    faults: dict[str, FaultConfig] = field(default_factory=dict)
    seed: int = 0
    api_key: str | None = None
    models: dict[str, ModelProfile] = field(default_factory=default_models)
    answers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "ms_per_token"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}")
        if not self.models:
            raise ValueError("the simulator needs at least one model")
        unknown = sorted(set(self.faults) - set(self.models) - {ANY_MODEL})
        if unknown:
            raise ValueError(
                f"faults name unknown models {unknown}; serve one of {sorted(self.models)} "
                f"or use {ANY_MODEL!r}"
            )

    def faults_for(self, model: str) -> FaultConfig:
        """The model's own faults, else the `"*"` entry, else no faults."""
        if model in self.faults:
            return self.faults[model]
        return self.faults.get(ANY_MODEL, FaultConfig())

    def ttft_ms_for(self, model: str) -> float:
        """Time to first token of `model`, after the global override."""
        return self.ttft_ms if self.ttft_ms is not None else self.models[model].ttft_ms

    def ms_per_token_for(self, model: str) -> float:
        """Time per generated token of `model`, after the global override."""
        if self.ms_per_token is not None:
            return self.ms_per_token
        return self.models[model].ms_per_token


def parse_fault_spec(spec: str) -> tuple[str, FaultConfig]:
    """Parse a CLI fault spec such as `"gpt-4o:error_rate=0.3,retry_after_s=2"`.

    The part before the last `:` is a model name or `"*"` for all models; the
    rest is comma-separated `field=number` pairs naming `FaultConfig` fields.

    Raises:
        ValueError: the spec lacks a model or fields, names an unknown or
            repeated field, or gives a value that is not a valid number.
    """
    model, sep, body = spec.strip().rpartition(":")
    if not sep or not model.strip():
        raise ValueError(
            f"fault spec {spec!r} needs a model: MODEL:field=value,... (MODEL may be '*')"
        )
    if not body.strip():
        raise ValueError(f"fault spec {spec!r} has no field=value pairs after ':'")
    values = _parse_fault_fields(spec, body)
    try:
        return model.strip(), FaultConfig(**values)
    except ValueError as exc:
        raise ValueError(f"fault spec {spec!r}: {exc}") from exc


def _parse_fault_fields(spec: str, body: str) -> dict[str, float]:
    known = [f.name for f in fields(FaultConfig)]
    values: dict[str, float] = {}
    for item in body.split(","):
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not key:
            raise ValueError(f"fault spec {spec!r}: {item.strip()!r} is not field=value")
        if key not in known:
            raise ValueError(f"fault spec {spec!r}: unknown field {key!r}; use one of {known}")
        if key in values:
            raise ValueError(f"fault spec {spec!r}: field {key!r} given twice")
        values[key] = _parse_number(spec, key, raw)
    return values


def _parse_number(spec: str, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"fault spec {spec!r}: {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"fault spec {spec!r}: {key}={raw!r} is not a finite number")
    return value
