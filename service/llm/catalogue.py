"""The model catalogue: which providers exist, which models they serve, at what price.

A YAML file (see `service/defaults/models.example.yaml`) lists providers and models:

    providers:                    one OpenAI-compatible endpoint each
      - name, base_url?, api_key_env?, max_concurrency, max_queue, timeout_s,
        group_prompts? {max_prompts, max_in_flight, max_wait_ms, prompt_format}
    models:                       one priced model each, served by one provider
      - name, provider, tier, input_usd_per_mtok, output_usd_per_mtok,
        context_window_tokens, fallbacks

The file's shape is declared once, as pydantic models (`_CatalogueFile` and the
entries it holds): they refuse unknown keys, wrong types and values under
their minimums. `load_catalogue` checks the whole file at start-up, so a typo
fails the service before it takes traffic, with a one-line message naming the
file and entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from service.domain import ChatMessage, Usage
from service.errors import UnknownModelError
from service.llm.pricing import ModelPrice
from service.urls import http_url_problem

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic.fields import FieldInfo
    from pydantic_core import ErrorDetails

Tier = Literal["small", "medium", "large"]
TIERS: tuple[str, ...] = get_args(Tier)
"""Model tiers, weakest and cheapest first."""

PromptFormat = Literal["plain", "chatml"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)
"""How a grouped call's messages become one prompt: `plain` sends a lone user
message as it is (any other conversation is not grouped), `chatml` renders
every message with ChatML markers."""

_CHARS_PER_TOKEN = 4
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_PROBLEMS = 5
"""Problems listed in one error message; the rest are counted."""

_FILE_RULES = ConfigDict(
    extra="forbid",
    frozen=True,
    strict=True,
    allow_inf_nan=False,
    str_strip_whitespace=True,
    str_min_length=1,
)
"""How every mapping of the file is read: unknown keys refused, no type coercion
(`"5"` is not a number, `true` is not an integer), numbers finite, text non-empty
and stripped."""

_Spec = TypeVar("_Spec", "ProviderSpec", "ModelSpec")


def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


_Choice = BeforeValidator(_stripped)
"""Strips a choice (`tier: " small "`) as text fields are stripped, before it is compared."""


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count: about four characters per token, at least one per word.

    Good enough to pick a tier or to see that a prompt cannot fit a context
    window; counted as usage only where the provider reported none (a stream cut
    short, a provider that sends no usage): the provider's reported usage is billed.
    """
    by_chars = math.ceil(len(text) / _CHARS_PER_TOKEN)
    return max(by_chars, len(text.split()))


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """`estimate_tokens` over every message, plus a few tokens of framing per message."""
    return sum(estimate_tokens(m.content) + 4 for m in messages)


def estimate_usage(messages: Sequence[ChatMessage], answer: str) -> Usage:
    """The usage of asking `messages` and getting `answer`, estimated: for an answer
    whose provider reported none (a stream cut short, a provider that sends none)."""
    return Usage(estimate_prompt_tokens(messages), estimate_tokens(answer))


class PromptGrouping(BaseModel):
    """Send concurrent unary calls for one model as one `/v1/completions` request.

    For providers that take a list of prompts in one request (vLLM does).
    Calls are grouped only with calls of the same model and sampling
    parameters; at most `max_in_flight` grouped requests per model and
    parameters run at once, and calls that arrive while they do go together
    in the next one (at most `max_prompts`). A lone call is sent at once
    unless `max_wait_ms` holds it back for company.

    Both a provider's `group_prompts` mapping in the file and the value the
    gateway uses (frozen, compared by value).
    """

    model_config = _FILE_RULES

    max_prompts: int = Field(16, ge=1)
    max_in_flight: int = Field(4, ge=1)
    max_wait_ms: float = Field(0.0, ge=0)
    prompt_format: Annotated[PromptFormat, _Choice] = "plain"


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
            f"max_queue={self.max_queue}, timeout_s={self.timeout_s}, grouping={self.grouping!r})"
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
            shown = name if len(name) <= 64 else f"{name[:64]}… ({len(name)} characters)"
            raise UnknownModelError(
                f"unknown model {shown!r}; use one of {sorted(self.models)} or name no model "
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
        """The models of `tier`, in file order."""
        return tuple(m for m in self.models.values() if m.tier == tier)

    def model_for_tier(self, tier: str) -> ModelSpec:
        """The cheapest model of `tier` (input plus output price per million tokens; the
        first listed of equals), its models being equally able; when the tier is empty,
        the nearest stronger tier's, else the nearest weaker one's. Found from outside:
        the first listed was chosen, though the router's promise is the cheapest."""
        index = TIERS.index(tier)
        for candidate in (*TIERS[index:], *reversed(TIERS[:index])):
            models = self.models_in_tier(candidate)
            if models:
                return min(models, key=lambda m: m.price.per_mtok_both_ways)
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


# --- the file's shape -------------------------------------------------------------------


class _ProviderEntry(BaseModel):
    """One `providers[]` entry as written; `base_url` has its `${VAR}`s expanded from
    the `env` in the validation context."""

    model_config = _FILE_RULES

    name: str
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = Field(64, ge=1)
    max_queue: int = Field(256, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    group_prompts: PromptGrouping | None = None

    @field_validator("group_prompts", mode="before")
    @classmethod
    def _true_means_defaults(cls, value: object) -> object:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("base_url")
    @classmethod
    def _expand_base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        env: Mapping[str, str] = (info.context or {}).get("env", {})
        return None if value is None else _expand(value, env)

    def spec(self, env: Mapping[str, str]) -> ProviderSpec:
        api_key = env.get(self.api_key_env) if self.api_key_env is not None else None
        return ProviderSpec(
            name=self.name,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            api_key=api_key or None,
            max_concurrency=self.max_concurrency,
            max_queue=self.max_queue,
            timeout_s=self.timeout_s,
            grouping=self.group_prompts,
        )


class _ModelEntry(BaseModel):
    """One `models[]` entry as written."""

    model_config = _FILE_RULES

    name: str
    provider: str
    tier: Annotated[Tier, _Choice]
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    context_window_tokens: int = Field(ge=1)
    fallbacks: list[str] = Field(default_factory=list)

    def spec(self) -> ModelSpec:
        return ModelSpec(
            name=self.name,
            provider=self.provider,
            tier=self.tier,
            price=ModelPrice(self.input_usd_per_mtok, self.output_usd_per_mtok),
            context_window_tokens=self.context_window_tokens,
            fallbacks=tuple(self.fallbacks),
        )


class _CatalogueFile(BaseModel):
    """The whole file: both lists, neither empty."""

    model_config = _FILE_RULES

    providers: list[_ProviderEntry] = Field(min_length=1)
    models: list[_ModelEntry] = Field(min_length=1)


def _expand(value: str, env: Mapping[str, str]) -> str | None:
    """`${VAR}` replaced from `env`; None when a referenced variable is unset or empty."""
    if "${" in _ENV_REFERENCE.sub("", value):
        raise ValueError(
            f"'base_url' has a malformed ${{VAR}} reference in {value!r}; "
            "write ${NAME}, NAME made of letters, digits and _"
        )
    if any(not env.get(name) for name in _ENV_REFERENCE.findall(value)):
        return None
    expanded = _ENV_REFERENCE.sub(lambda match: env[match.group(1)], value)
    problem = http_url_problem(expanded)
    if problem is not None:
        raise ValueError(f"'base_url' must be an http(s) URL ({problem}), got {expanded!r}")
    return expanded


# --- loading ----------------------------------------------------------------------------


def load_catalogue(path: Path, env: Mapping[str, str]) -> Catalogue:
    """Read and check the catalogue at `path`; `env` resolves `api_key_env` and `${VAR}`.

    Raises:
        ValueError: the file is missing, is not valid YAML, or has an entry
            that is malformed, duplicated, names an unknown provider, tier or
            fallback model; the one-line message names the file and the entry.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the model catalogue: {error}") from error
    except UnicodeDecodeError:  # found from outside: reported without the file's name
        raise ValueError(f"{path}: the model catalogue is not UTF-8 text") from None
    return parse_catalogue(document, env, source=str(path))


def parse_catalogue(document: Any, env: Mapping[str, str], source: str) -> Catalogue:
    """Check an already-parsed catalogue document; `source` names it in errors.

    Raises:
        ValueError: as `load_catalogue`.
    """
    try:
        file = _CatalogueFile.model_validate(document, context={"env": env})
    except ValidationError as error:
        raise ValueError(f"{source}: {_problems(error, document)}") from None
    providers = _by_name(source, "providers", [entry.spec(env) for entry in file.providers])
    models = _by_name(source, "models", [entry.spec() for entry in file.models])
    catalogue = Catalogue(providers, models, source)
    _check_references(catalogue)
    return catalogue


def _by_name(source: str, section: str, items: Sequence[_Spec]) -> dict[str, _Spec]:
    by_name: dict[str, _Spec] = {}
    for index, item in enumerate(items):
        if item.name in by_name:
            raise ValueError(
                f"{source}: {section}[{index}] ({item.name}): duplicate name {item.name!r}"
            )
        by_name[item.name] = item
    return by_name


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


# --- pydantic's errors, in the file's words ---------------------------------------------

_SECTIONS: dict[str | int, type[BaseModel]] = {
    "providers": _ProviderEntry,
    "models": _ModelEntry,
}
_NESTED: dict[str | int, type[BaseModel]] = {"group_prompts": PromptGrouping}
_KINDS: dict[object, str] = {int: "an integer", float: "a finite number", str: "a non-empty string"}


@dataclass(frozen=True)
class _Place:
    """Where one pydantic error is: the entry's label, the model checking that
    mapping, the mapping as written, and the error's path inside it."""

    where: str
    model: type[BaseModel]
    raw: Any
    rest: tuple[str | int, ...]


def _problems(error: ValidationError, document: Any) -> str:
    """Every error of `error` on one line, `; `-separated, each naming its entry;
    unknown keys of one mapping are listed together."""
    located = [(_locate(detail["loc"], document), detail) for detail in error.errors()]
    unknown: dict[str, list[str]] = {}
    for place, detail in located:
        if detail["type"] == "extra_forbidden":
            unknown.setdefault(place.where, []).append(str(place.rest[-1]))
    problems: list[str] = []
    for place, detail in located:
        if detail["type"] != "extra_forbidden":
            problem = _describe(place, detail)
        elif place.where in unknown:
            allowed = sorted(place.model.model_fields)
            problem = f"unknown keys {sorted(unknown.pop(place.where))}; allowed: {allowed}"
        else:
            continue
        problems.append(f"{place.where}: {problem}" if place.where else problem)
    hidden = len(problems) - _MAX_PROBLEMS
    return "; ".join(problems[:_MAX_PROBLEMS] + ([f"and {hidden} more"] if hidden > 0 else []))


def _locate(loc: tuple[str | int, ...], document: Any) -> _Place:
    if len(loc) < 2:
        return _Place("", _CatalogueFile, document, loc)
    section, index, *rest = loc
    raw = document[section][index]
    name = raw.get("name") if isinstance(raw, dict) else None
    name = name.strip() if isinstance(name, str) else ""
    where = f"{section}[{index}]" + (f" ({name})" if name else "")
    model = _SECTIONS[section]
    if rest and rest[0] in _NESTED:
        where, model, raw = f"{where}: {rest[0]}", _NESTED[rest[0]], raw.get(rest[0])
        return _Place(where, model, raw, tuple(rest[1:]))
    return _Place(where, model, raw, tuple(rest))


def _describe(place: _Place, detail: ErrorDetails) -> str:
    """One error inside one mapping, saying what the value must be."""
    if not place.rest:
        kind = type(place.raw).__name__
        if place.model is _CatalogueFile:
            return f"expected a mapping with 'providers' and 'models' lists, got {kind}"
        also = " (or true)" if place.model is PromptGrouping else ""
        return f"expected a mapping{also}, got {kind}"
    key = str(place.rest[0])
    if place.model is _CatalogueFile:
        return f"'{key}' must be a non-empty list"
    field = place.model.model_fields[key]
    value = place.raw.get(key, detail["input"])
    if detail["type"] == "missing":
        return f"add '{key}': {_expected(field)}"
    if detail["type"] == "value_error":
        return str(detail.get("ctx", {}).get("error", detail["msg"]))
    if detail["type"] == "literal_error":
        return f"unknown {key} {value!r}; use {_expected(field)}"
    return f"'{key}' must be {_expected(field)}, got {value!r}{_yaml_number_hint(value)}"


def _yaml_number_hint(value: object) -> str:
    """Why a number written as YAML 1.1 text is text: found from outside, `15e-2` (no dot)
    was reported as not a finite number, with nothing to say it was read as a string."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as text: write it as {number!r})"


def _expected(field: FieldInfo) -> str:
    """What a field takes, from its type and bounds: "an integer >= 1"."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return f"one of {list(get_args(annotation))}"
    if get_origin(annotation) is list:
        return "a list of model names"
    bounds = [f">= {m.ge:g}" for m in field.metadata if isinstance(m, Ge)]
    bounds += [f"> {m.gt:g}" for m in field.metadata if isinstance(m, Gt)]
    return " ".join([_KINDS.get(annotation, "a mapping"), *bounds])
