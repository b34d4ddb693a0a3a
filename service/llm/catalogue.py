"""The model catalogue: which providers exist, which models they serve, at what price.

A YAML file (see `service/defaults/models.example.yaml`) lists providers and models:

    providers:                    one OpenAI-compatible endpoint each
      - name, base_url?, api_key_env?, max_concurrency, max_queue, timeout_s,
        group_prompts? {max_prompts, max_in_flight, max_wait_ms, prompt_format}
    models:                       one priced model each, served by one provider
      - name, provider, tier, input_usd_per_mtok, output_usd_per_mtok,
        context_window_tokens, fallbacks

`load_catalogue` checks the whole file at start-up, so a typo fails the
service before it takes traffic, with a message naming the file and entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from service.domain import ChatMessage
from service.errors import UnknownModelError
from service.llm.pricing import ModelPrice

TIERS: tuple[str, ...] = ("small", "medium", "large")
"""Model tiers, weakest and cheapest first."""

_CHARS_PER_TOKEN = 4
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PROVIDER_KEYS = frozenset(
    {
        "name",
        "base_url",
        "api_key_env",
        "max_concurrency",
        "max_queue",
        "timeout_s",
        "group_prompts",
    }
)
_GROUPING_KEYS = frozenset({"max_prompts", "max_in_flight", "max_wait_ms", "prompt_format"})
PROMPT_FORMATS: tuple[str, ...] = ("plain", "chatml")
"""How a grouped call's messages become one prompt: `plain` sends a lone user
message as it is (any other conversation is not grouped), `chatml` renders
every message with ChatML markers."""
_MODEL_KEYS = frozenset(
    {
        "name",
        "provider",
        "tier",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "context_window_tokens",
        "fallbacks",
    }
)


_Spec = TypeVar("_Spec", "ProviderSpec", "ModelSpec")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count: about four characters per token, at least one per word.

    Good enough to pick a tier or to see that a prompt cannot fit a context
    window; never used for billing (the provider's reported usage is).
    """
    by_chars = math.ceil(len(text) / _CHARS_PER_TOKEN)
    return max(by_chars, len(text.split()))


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """`estimate_tokens` over every message, plus a few tokens of framing per message."""
    return sum(estimate_tokens(m.content) + 4 for m in messages)


@dataclass(frozen=True)
class PromptGrouping:
    """Send concurrent unary calls for one model as one `/v1/completions` request.

    For providers that take a list of prompts in one request (vLLM does).
    Calls are grouped only with calls of the same model and sampling
    parameters; at most `max_in_flight` grouped requests per model and
    parameters run at once, and calls that arrive while they do go together
    in the next one (at most `max_prompts`). A lone call is sent at once
    unless `max_wait_ms` holds it back for company.
    """

    max_prompts: int = 16
    max_in_flight: int = 4
    max_wait_ms: float = 0.0
    prompt_format: str = "plain"


@dataclass(frozen=True)
class ProviderSpec:
    """One OpenAI-compatible endpoint and the limits the gateway keeps towards it.

    `base_url` None means "the gateway's default upstream" (see
    `Catalogue.with_default_base_url`). `api_key` is read from the environment
    variable `api_key_env` at load time, and kept out of `repr`.
    """

    name: str
    base_url: str | None
    api_key_env: str | None
    api_key: str | None
    max_concurrency: int
    max_queue: int
    timeout_s: float
    grouping: PromptGrouping | None = None

    def __repr__(self) -> str:
        return (
            f"ProviderSpec(name={self.name!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"max_queue={self.max_queue}, timeout_s={self.timeout_s}, grouping={self.grouping})"
        )


@dataclass(frozen=True)
class ModelSpec:
    """One model: who serves it, its tier, price, context window and fallbacks (in order)."""

    name: str
    provider: str
    tier: str
    price: ModelPrice
    context_window_tokens: int
    fallbacks: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    """Providers and models by name, in file order; built by `load_catalogue`."""

    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    source: str = "<catalogue>"

    def require_model(self, name: str) -> ModelSpec:
        """The model called `name`.

        Raises:
            UnknownModelError: no such model; the message lists the known ones.
        """
        model = self.models.get(name)
        if model is None:
            raise UnknownModelError(
                f"unknown model {name!r}; use one of {sorted(self.models)} or name no model "
                "and let the router choose"
            )
        return model

    def price(self, model: str) -> ModelPrice:
        """What `model` charges.

        Raises:
            UnknownModelError: no such model.
        """
        return self.require_model(model).price

    def prices(self) -> dict[str, ModelPrice]:
        """Every model's price by name (the gateway's cost table)."""
        return {name: model.price for name, model in self.models.items()}

    def provider_of(self, model: str) -> ProviderSpec:
        """The provider serving `model`.

        Raises:
            UnknownModelError: no such model.
        """
        return self.providers[self.require_model(model).provider]

    def models_in_tier(self, tier: str) -> tuple[ModelSpec, ...]:
        """The models of `tier`, in file order (the first is the tier's default)."""
        return tuple(m for m in self.models.values() if m.tier == tier)

    def model_for_tier(self, tier: str) -> ModelSpec:
        """The default model of `tier`; when the tier is empty, the nearest stronger
        tier's, else the nearest weaker one's."""
        index = TIERS.index(tier)
        for candidate in (*TIERS[index:], *reversed(TIERS[:index])):
            models = self.models_in_tier(candidate)
            if models:
                return models[0]
        raise AssertionError("a loaded catalogue always has at least one model")

    @property
    def strongest(self) -> ModelSpec:
        """The default model of the strongest non-empty tier: the "send everything there"
        baseline that routing savings are measured against."""
        return self.model_for_tier(TIERS[-1])

    def with_default_base_url(self, base_url: str, api_key: str | None = None) -> Catalogue:
        """A copy whose providers without a `base_url` use `base_url` (and `api_key`
        when they have none), e.g. the built-in simulator's URL under `semcache serve`."""
        providers = {
            name: _with_default(spec, base_url, api_key) for name, spec in self.providers.items()
        }
        return replace(self, providers=providers)


def _with_default(spec: ProviderSpec, base_url: str, api_key: str | None) -> ProviderSpec:
    if spec.base_url is not None:
        return spec
    return replace(spec, base_url=base_url, api_key=spec.api_key or api_key)


def load_catalogue(path: Path, env: Mapping[str, str]) -> Catalogue:
    """Read and check the catalogue at `path`; `env` resolves `api_key_env` and `${VAR}`.

    Raises:
        ValueError: the file is missing, is not valid YAML, or has an entry
            that is malformed, duplicated, names an unknown provider, tier or
            fallback model; the message names the file and the entry.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the model catalogue: {error}") from error
    return parse_catalogue(document, env, source=str(path))


def parse_catalogue(document: Any, env: Mapping[str, str], source: str) -> Catalogue:
    """Check an already-parsed catalogue document; `source` names it in errors.

    Raises:
        ValueError: as `load_catalogue`.
    """
    if not isinstance(document, dict) or set(document) - {"providers", "models"}:
        raise ValueError(f"{source}: expected a mapping with 'providers' and 'models' lists")
    provider_entries = _section(source, "providers", document.get("providers"), _PROVIDER_KEYS)
    model_entries = _section(source, "models", document.get("models"), _MODEL_KEYS)
    providers = _by_name(provider_entries, [_provider(e, env) for e in provider_entries])
    models = _by_name(model_entries, [_model(e) for e in model_entries])
    catalogue = Catalogue(providers, models, source)
    _check_references(catalogue)
    return catalogue


def _section(source: str, section: str, raw: Any, allowed: frozenset[str]) -> list[_Entry]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: '{section}' must be a non-empty list")
    return [_Entry(f"{source}: {section}[{i}]", entry, allowed) for i, entry in enumerate(raw)]


def _by_name(entries: Sequence[_Entry], items: Sequence[_Spec]) -> dict[str, _Spec]:
    by_name: dict[str, _Spec] = {}
    for entry, item in zip(entries, items, strict=True):
        if item.name in by_name:
            raise entry.fail(f"duplicate name {item.name!r}")
        by_name[item.name] = item
    return by_name


class _Entry:
    """One mapping of the file, with typed getters that fail naming the entry."""

    def __init__(self, where: str, raw: Any, allowed: frozenset[str]) -> None:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        name = raw.get("name")
        self.where = f"{where} ({name})" if isinstance(name, str) else where
        self.raw: dict[str, Any] = raw

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.where}: {message}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"'{key}' must be a non-empty string, got {value!r}")
        return value.strip()

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.raw.get(key) is not None else None

    def number(self, key: str, default: float | None = None, minimum: float = 0.0) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"'{key}' must be a number, got {value!r}")
        if not (math.isfinite(value) and value >= minimum):
            raise self.fail(f"'{key}' must be a finite number >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"'{key}' must be an integer >= {minimum}, got {value!r}")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"'{key}' must be a list of model names, got {value!r}")
        return tuple(value)


def _provider(entry: _Entry, env: Mapping[str, str]) -> ProviderSpec:
    timeout_s = entry.number("timeout_s", 60.0)
    if timeout_s <= 0:
        raise entry.fail(f"'timeout_s' must be > 0, got {timeout_s:g}")
    api_key_env = entry.optional_text("api_key_env")
    api_key = env.get(api_key_env) if api_key_env is not None else None
    return ProviderSpec(
        name=entry.text("name"),
        base_url=_expand(entry, entry.optional_text("base_url"), env),
        api_key_env=api_key_env,
        api_key=api_key or None,
        max_concurrency=entry.integer("max_concurrency", 64, minimum=1),
        max_queue=entry.integer("max_queue", 256),
        timeout_s=timeout_s,
        grouping=_grouping(entry),
    )


def _grouping(provider: _Entry) -> PromptGrouping | None:
    raw = provider.raw.get("group_prompts")
    if raw is None or raw is False:
        return None
    entry = _Entry(f"{provider.where}: group_prompts", {} if raw is True else raw, _GROUPING_KEYS)
    defaults = PromptGrouping()
    prompt_format = entry.text("prompt_format", defaults.prompt_format)
    if prompt_format not in PROMPT_FORMATS:
        raise entry.fail(
            f"unknown prompt_format {prompt_format!r}; use one of {list(PROMPT_FORMATS)}"
        )
    return PromptGrouping(
        max_prompts=entry.integer("max_prompts", defaults.max_prompts, minimum=1),
        max_in_flight=entry.integer("max_in_flight", defaults.max_in_flight, minimum=1),
        max_wait_ms=entry.number("max_wait_ms", defaults.max_wait_ms),
        prompt_format=prompt_format,
    )


def _expand(entry: _Entry, value: str | None, env: Mapping[str, str]) -> str | None:
    """`${VAR}` replaced from `env`; None when a referenced variable is unset or empty."""
    if value is None:
        return None
    missing = [name for name in _ENV_REFERENCE.findall(value) if not env.get(name)]
    if missing:
        return None
    expanded = _ENV_REFERENCE.sub(lambda match: env[match.group(1)], value)
    if not expanded.startswith(("http://", "https://")):
        raise entry.fail(f"'base_url' must be an http(s) URL, got {expanded!r}")
    return expanded


def _model(entry: _Entry) -> ModelSpec:
    tier = entry.text("tier")
    if tier not in TIERS:
        raise entry.fail(f"unknown tier {tier!r}; use one of {list(TIERS)}")
    return ModelSpec(
        name=entry.text("name"),
        provider=entry.text("provider"),
        tier=tier,
        price=ModelPrice(entry.number("input_usd_per_mtok"), entry.number("output_usd_per_mtok")),
        context_window_tokens=entry.integer("context_window_tokens", minimum=1),
        fallbacks=entry.names("fallbacks"),
    )


def _check_references(catalogue: Catalogue) -> None:
    for index, model in enumerate(catalogue.models.values()):
        where = f"{catalogue.source}: models[{index}] ({model.name})"
        if model.provider not in catalogue.providers:
            raise ValueError(
                f"{where}: unknown provider {model.provider!r}; "
                f"known providers: {sorted(catalogue.providers)}"
            )
        for fallback in model.fallbacks:
            if fallback == model.name:
                raise ValueError(f"{where}: a model cannot be its own fallback")
            if fallback not in catalogue.models:
                raise ValueError(
                    f"{where}: fallback {fallback!r} is not a model in this catalogue; "
                    f"known models: {sorted(catalogue.models)}"
                )
