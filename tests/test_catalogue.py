"""The model catalogue: the shipped seed file, and the mistakes a user's own file can make."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.domain import ChatMessage
from service.errors import InvalidRequestError
from service.llm.catalogue import (
    Catalogue,
    PromptGrouping,
    estimate_prompt_tokens,
    estimate_tokens,
    load_catalogue,
    parse_catalogue,
)
from service.llm.pricing import DEFAULT_PRICES
from service.llm.resilience import build_resilient_provider
from service.startup import startup_error_for

EXAMPLE = Path(__file__).resolve().parent.parent / "service" / "defaults" / "models.example.yaml"


@pytest.fixture(scope="module")
def seed() -> Catalogue:
    return load_catalogue(EXAMPLE, env={})


def _document() -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(document, dict)
    return copy.deepcopy(document)


def test_the_seed_catalogue_lists_the_simulated_models_at_their_prices(seed: Catalogue) -> None:
    assert seed.prices() == DEFAULT_PRICES
    assert seed.price("gpt-4o").output_usd_per_mtok == 10.0
    assert [m.name for m in seed.models_in_tier("small")] == ["gpt-4o-mini"]
    assert seed.strongest.name == "gpt-4o"
    assert seed.provider_of("claude-3-5-haiku").name == "anthropic"
    assert seed.provider_of("gpt-4o-mini").name == "openai"


def test_every_seed_model_falls_back_to_another_provider(seed: Catalogue) -> None:
    for model in seed.models.values():
        fallback_providers = {seed.models[f].provider for f in model.fallbacks}
        assert fallback_providers - {model.provider}, model.name


def test_base_urls_and_keys_come_from_the_file_or_the_environment() -> None:
    env = {"ANTHROPIC_BASE_URL": "https://anthropic.example/v1", "OPENAI_API_KEY": "sk-test"}
    catalogue = load_catalogue(EXAMPLE, env)

    anthropic, openai = catalogue.providers["anthropic"], catalogue.providers["openai"]
    assert anthropic.base_url == "https://anthropic.example/v1"
    assert (openai.base_url, openai.api_key) == (None, "sk-test")
    assert "sk-test" not in repr(openai)


def test_providers_without_a_base_url_take_the_default_upstream(seed: Catalogue) -> None:
    with pytest.raises(ValueError, match=r"provider 'openai' has no base_url"):
        build_resilient_provider(seed)

    filled = seed.with_default_base_url("http://127.0.0.1:9/v1", "sim-key")
    env_set = load_catalogue(EXAMPLE, {"ANTHROPIC_BASE_URL": "https://a.example/v1"})
    kept = env_set.with_default_base_url("http://127.0.0.1:9/v1")

    assert {p.base_url for p in filled.providers.values()} == {"http://127.0.0.1:9/v1"}
    assert filled.providers["openai"].api_key == "sim-key"
    assert kept.providers["anthropic"].base_url == "https://a.example/v1"


def test_an_unknown_model_is_an_invalid_request_listing_the_known_ones(seed: Catalogue) -> None:
    with pytest.raises(InvalidRequestError, match=r"'gpt-5'.*'claude-3-5-haiku'"):
        seed.require_model("gpt-5")
    with pytest.raises(InvalidRequestError):
        seed.price("gpt-5")


def test_an_empty_tier_borrows_the_next_stronger_one() -> None:
    document = _document()
    document["models"] = [m for m in document["models"] if m["tier"] != "medium"]
    for model in document["models"]:
        model["fallbacks"] = []
    catalogue = parse_catalogue(document, {}, "no-medium.yaml")
    assert catalogue.model_for_tier("medium").name == "gpt-4o"


def test_a_tier_is_answered_by_its_cheapest_model() -> None:
    """Found from outside: with gpt-4o listed before gpt-4o-mini in one tier, simple
    questions went to gpt-4o, at about 16 times the price."""
    document = _document()
    for model in document["models"]:
        model["tier"] = "small"
        model["fallbacks"] = []
    document["models"].sort(key=lambda m: -float(m["output_usd_per_mtok"]))
    catalogue = parse_catalogue(document, {}, "one-tier.yaml")
    assert catalogue.models_in_tier("small")[0].name == "gpt-4o"
    assert catalogue.model_for_tier("small").name == "gpt-4o-mini"


def _break(mutate: str) -> dict[str, Any]:
    document = _document()
    models, providers = document["models"], document["providers"]
    if mutate == "unknown provider":
        models[1]["provider"] = "mistral"
    elif mutate == "duplicate model":
        models[2]["name"] = "gpt-4o-mini"
    elif mutate == "duplicate provider":
        providers[1]["name"] = "openai"
    elif mutate == "unknown fallback":
        models[0]["fallbacks"] = ["gpt-5"]
    elif mutate == "own fallback":
        models[0]["fallbacks"] = ["gpt-4o-mini"]
    elif mutate == "unknown tier":
        models[0]["tier"] = "tiny"
    elif mutate == "typo key":
        models[0]["context_window"] = 5
    elif mutate == "negative price":
        models[0]["input_usd_per_mtok"] = -1
    elif mutate == "no models":
        document["models"] = []
    return document


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("unknown provider", r"models\[1\] \(claude-3-5-haiku\): unknown provider 'mistral'"),
        ("duplicate model", r"models\[2\] \(gpt-4o-mini\): duplicate name 'gpt-4o-mini'"),
        ("duplicate provider", r"providers\[1\] \(openai\): duplicate name"),
        ("unknown fallback", r"models\[0\] \(gpt-4o-mini\): fallback 'gpt-5' is not a model"),
        ("own fallback", r"gpt-4o-mini\): a model cannot be its own fallback"),
        ("unknown tier", r"unknown tier 'tiny'; use one of \['small', 'medium', 'large'\]"),
        ("typo key", r"unknown keys \['context_window'\]"),
        ("negative price", r"'input_usd_per_mtok' must be a finite number >= 0"),
        ("no models", r"'models' must be a non-empty list"),
    ],
)
def test_a_broken_catalogue_is_refused_naming_the_file_and_entry(
    tmp_path: Path, mutate: str, message: str
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(_break(mutate)))
    with pytest.raises(ValueError, match=message) as refused:
        load_catalogue(path, env={})
    assert str(refused.value).startswith(str(path))
    assert "\n" not in str(refused.value)


_Mutation = Callable[[dict[str, Any]], object]
_MODEL_KEYS = (
    "['context_window_tokens', 'fallbacks', 'input_usd_per_mtok', 'name', "
    "'output_usd_per_mtok', 'provider', 'tier']"
)


@pytest.mark.parametrize(
    ("mutate", "env", "problem"),
    [
        pytest.param(
            lambda d: d["models"][2].update(context_window=5, colour="red"),
            {},
            "models[2] (gpt-4o): unknown keys ['colour', 'context_window']; "
            f"allowed: {_MODEL_KEYS}",
            id="unknown keys",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(max_queue="many"),
            {},
            "providers[0] (openai): 'max_queue' must be an integer >= 0, got 'many'",
            id="wrong type",
        ),
        pytest.param(
            lambda d: d["providers"][1].update(max_concurrency=True),
            {},
            "providers[1] (anthropic): 'max_concurrency' must be an integer >= 1, got True",
            id="a boolean is not an integer",
        ),
        pytest.param(
            lambda d: d["models"][1].update(context_window_tokens=0),
            {},
            "models[1] (claude-3-5-haiku): 'context_window_tokens' must be an integer >= 1, got 0",
            id="under its minimum",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(timeout_s=0),
            {},
            "providers[0] (openai): 'timeout_s' must be a finite number > 0, got 0",
            id="not above its bound",
        ),
        pytest.param(
            lambda d: d["providers"][1].update(base_url="https://${API HOST}/v1"),
            {"API_HOST": "a.example"},
            "providers[1] (anthropic): 'base_url' has a malformed ${VAR} reference in "
            "'https://${API HOST}/v1'; write ${NAME}, NAME made of letters, digits and _",
            id="malformed ${VAR}",
        ),
        pytest.param(
            lambda d: None,
            {"ANTHROPIC_BASE_URL": "anthropic.example"},
            "providers[1] (anthropic): 'base_url' must be an http(s) URL (it must start with"
            " http:// or https://), got 'anthropic.example'",
            id="${VAR} that is not a URL",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(base_url="http://127.0.0.1:99999/v1"),
            {},
            "providers[0] (openai): 'base_url' must be an http(s) URL (its port must be a"
            " number from 1 to 65535), got 'http://127.0.0.1:99999/v1'",
            id="a port out of range",
        ),
        pytest.param(
            lambda d: d["models"][0].update(input_usd_per_mtok="15e-2"),
            {},
            "models[0] (gpt-4o-mini): 'input_usd_per_mtok' must be a finite number >= 0, got"
            " '15e-2' (YAML reads 15e-2 as text: write it as 0.15)",
            id="a YAML 1.1 exponent without a dot",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(base_url="http://"),
            {},
            "providers[0] (openai): 'base_url' must be an http(s) URL (it names no host),"
            " got 'http://'",
            id="no host",
        ),
        pytest.param(
            lambda d: d["models"][0].pop("tier"),
            {},
            "models[0] (gpt-4o-mini): add 'tier': one of ['small', 'medium', 'large']",
            id="missing key",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(group_prompts={"max_wait_ms": -1}),
            {},
            "providers[0] (openai): group_prompts: 'max_wait_ms' must be a finite number >= 0, "
            "got -1",
            id="nested mapping",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_entry_and_the_fix(
    tmp_path: Path, mutate: _Mutation, env: dict[str, str], problem: str
) -> None:
    document = _document()
    mutate(document)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match=re.escape(problem)) as refused:
        load_catalogue(path, env)
    assert str(refused.value) == f"{path}: {problem}"

    startup = startup_error_for(refused.value, Settings(catalogue_path=path))
    assert str(startup) == f"{path}: {problem}; check SEMCACHE_CATALOGUE_PATH"


def test_every_mistake_of_a_file_is_reported_at_once_on_one_line() -> None:
    document = _document()
    document["providers"][0]["max_queue"] = -1
    document["models"][0]["tier"] = "tiny"
    document["models"][2]["output_usd_per_mtok"] = "ten"
    with pytest.raises(ValueError, match="max_queue") as refused:
        parse_catalogue(document, {}, "models.yaml")
    assert str(refused.value) == (
        "models.yaml: providers[0] (openai): 'max_queue' must be an integer >= 0, got -1; "
        "models[0] (gpt-4o-mini): unknown tier 'tiny'; use one of ['small', 'medium', 'large']; "
        "models[2] (gpt-4o): 'output_usd_per_mtok' must be a finite number >= 0, got 'ten'"
    )


def test_text_and_choices_are_stripped_and_defaults_filled() -> None:
    document = _document()
    document["models"][0]["tier"] = " small "
    document["providers"][0] = {"name": " openai ", "group_prompts": {"prompt_format": "chatml "}}
    catalogue = parse_catalogue(document, {}, "models.yaml")
    openai = catalogue.providers["openai"]
    assert catalogue.models["gpt-4o-mini"].tier == "small"
    assert (openai.max_concurrency, openai.max_queue, openai.timeout_s) == (64, 256, 60.0)
    assert openai.grouping == PromptGrouping(prompt_format="chatml")


def test_an_unreadable_catalogue_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the model catalogue"):
        load_catalogue(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    with pytest.raises(ValueError, match=r"bad.yaml: cannot read"):
        load_catalogue(bad, env={})


def test_token_estimates_follow_characters_or_words() -> None:
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("a b c d e f") == 6  # short words: at least one token each
    messages = [ChatMessage("system", "x" * 40), ChatMessage("user", "y" * 40)]
    assert estimate_prompt_tokens(messages) == 2 * (10 + 4)


def test_a_catalogue_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_bytes(b"\xff\xfe models")
    with pytest.raises(ValueError, match=r"models\.yaml: the model catalogue is not UTF-8 text"):
        load_catalogue(path, {})
