"""The upstream simulator, driven over real HTTP by the `openai` client it must satisfy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from semcache_simulator import (
    FaultConfig,
    SimulatorConfig,
    UpstreamSimulator,
    count_tokens,
    parse_fault_spec,
)
from semcache_simulator.faults import FaultPlanner
from service.llm.pricing import DEFAULT_PRICES

MODEL = "gpt-4o-mini"
QUESTION = "What is the capital of France?"
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]


def _config(**kwargs: Any) -> SimulatorConfig:
    return SimulatorConfig(ttft_ms=0.0, ms_per_token=0.0, **kwargs)


def _client(sim: UpstreamSimulator, api_key: str = "test-key") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0)


@pytest.fixture
async def sim() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(_config()) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: UpstreamSimulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _client(sim) as openai_client:
        yield openai_client


async def _ask(client: openai.AsyncOpenAI, model: str = MODEL, **kwargs: Any) -> Any:
    return await client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


async def _stream_chunks(client: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, **kwargs
    )
    return [chunk async for chunk in stream]


async def _collect_content(stream: Any, into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.choices[0].delta.content or "")


async def _get_json(sim: UpstreamSimulator, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{sim.port}{path}") as response,
    ):
        assert response.status == 200
        return await response.json()


# --- answers ---------------------------------------------------------------------------


async def test_unary_answer_is_deterministic_and_has_usage(
    sim: UpstreamSimulator, client: openai.AsyncOpenAI
) -> None:
    first = await _ask(client)
    async with UpstreamSimulator(_config()) as other_sim, _client(other_sim) as other_client:
        again = await _ask(other_client)

    text = first.choices[0].message.content
    assert text == again.choices[0].message.content
    assert text.startswith(f"[{MODEL}] Answer to: {QUESTION} ")
    assert first.object == "chat.completion"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.completion_tokens == count_tokens(text)
    assert first.usage.prompt_tokens > count_tokens(QUESTION)
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


async def test_answer_differs_by_model_and_question(client: openai.AsyncOpenAI) -> None:
    mini = await _ask(client)
    strong = await _ask(client, model="gpt-4o")
    other = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "How do tides work?"}]
    )

    texts = {r.choices[0].message.content for r in (mini, strong, other)}
    assert len(texts) == 3


async def test_stream_deltas_concatenate_to_the_unary_answer(client: openai.AsyncOpenAI) -> None:
    unary = await _ask(client)
    chunks = await _stream_chunks(client, stream_options={"include_usage": True})

    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    streamed = "".join(c.choices[0].delta.content for c in content_chunks)
    assert streamed == unary.choices[0].message.content
    assert len(content_chunks) == unary.usage.completion_tokens  # about one token per delta
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == unary.usage
    assert {c.id for c in chunks} == {chunks[0].id}


async def test_stream_without_include_usage_sends_no_usage(client: openai.AsyncOpenAI) -> None:
    chunks = await _stream_chunks(client)

    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_cuts_the_answer_with_finish_reason_length(
    client: openai.AsyncOpenAI, limit_field: str
) -> None:
    full = await _ask(client)
    capped = await _ask(client, **{limit_field: 12})
    chunks = await _stream_chunks(client, **{limit_field: 12})

    text = capped.choices[0].message.content
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 12
    assert full.choices[0].message.content.startswith(text)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_token_limit_above_answer_length_finishes_with_stop(
    client: openai.AsyncOpenAI,
) -> None:
    answer = await _ask(client, max_tokens=1000)

    assert answer.choices[0].finish_reason == "stop"


# --- errors and other endpoints ----------------------------------------------------------


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await _ask(client, model="gpt-9-imaginary")

    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
    ],
)
async def test_invalid_body_is_bad_request(
    client: openai.AsyncOpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", body=body, cast_to=object)

    assert caught.value.param == param


async def test_unparsable_json_gets_an_error_object(sim: UpstreamSimulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}/chat/completions", data=b"{not json") as response,
    ):
        body = await response.json()

    assert response.status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_models_lists_the_priced_models(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()

    assert {m.id for m in page.data} == set(DEFAULT_PRICES)
    mini = next(m for m in page.data if m.id == MODEL)
    assert mini.model_extra is not None
    assert mini.model_extra["input_usd_per_mtok"] == DEFAULT_PRICES[MODEL].input_usd_per_mtok
    assert mini.model_extra["ttft_ms"] == 0.0


async def test_completions_answers_each_prompt_in_order(client: openai.AsyncOpenAI) -> None:
    prompts = [QUESTION, "How do tides work?", "Name a prime number."]
    batch = await client.completions.create(model=MODEL, prompt=prompts)
    alone = [
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}])
        for p in prompts
    ]

    assert [c.index for c in batch.choices] == [0, 1, 2]
    assert [c.text for c in batch.choices] == [a.choices[0].message.content for a in alone]
    assert batch.usage is not None
    assert batch.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert batch.usage.prompt_tokens == sum(count_tokens(p) for p in prompts)


async def test_completions_accepts_a_single_string_prompt(client: openai.AsyncOpenAI) -> None:
    result = await client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=5)

    assert len(result.choices) == 1
    assert result.choices[0].finish_reason == "length"


async def test_stats_count_requests_per_endpoint_and_model(
    sim: UpstreamSimulator, client: openai.AsyncOpenAI
) -> None:
    await asyncio.gather(*(_ask(client) for _ in range(5)))
    await _ask(client, model="gpt-4o")
    await client.completions.create(model=MODEL, prompt=["a", "b"])
    with pytest.raises(openai.NotFoundError):
        await _ask(client, model="no-such-model")

    stats = await _get_json(sim, "/sim/stats")
    assert stats["total"] == 7
    assert stats["prompts_total"] == 8
    assert stats["by_model"] == {MODEL: 6, "gpt-4o": 1}
    assert stats["by_endpoint"] == {"chat.completions": 7, "completions": 1}
    assert sim.request_count() == 7
    assert sim.request_count(MODEL) == 6
    assert sim.request_count("claude-3-5-haiku") == 0


async def test_reset_zeroes_the_stats(sim: UpstreamSimulator, client: openai.AsyncOpenAI) -> None:
    await _ask(client)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{sim.port}/sim/reset") as response,
    ):
        assert response.status == 200

    assert sim.request_count() == 0
    assert (await _get_json(sim, "/sim/stats"))["by_endpoint"] == {}


async def test_unknown_route_gets_an_error_object(sim: UpstreamSimulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim.base_url}/embeddings") as response,
    ):
        body = await response.json()

    assert response.status == 404
    assert "error" in body


# --- faults ------------------------------------------------------------------------------


async def test_error_rate_answers_500() -> None:
    config = _config(faults={MODEL: FaultConfig(error_rate=1.0)})
    async with UpstreamSimulator(config) as sim, _client(sim) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await _ask(client)
        healthy = await _ask(client, model="gpt-4o")

    assert caught.value.type == "server_error"
    assert healthy.choices[0].finish_reason == "stop"
    assert sim.request_count(MODEL) == 1


async def test_rate_limit_answers_429_with_retry_after() -> None:
    config = _config(faults={"*": FaultConfig(rate_limit_rate=1.0, retry_after_s=2.0)})
    async with UpstreamSimulator(config) as sim, _client(sim) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await _ask(client, model="claude-3-5-haiku")

    assert caught.value.response.headers["Retry-After"] == "2"
    assert caught.value.code == "rate_limit_exceeded"


async def test_model_faults_override_the_wildcard() -> None:
    faults = {"*": FaultConfig(error_rate=1.0), MODEL: FaultConfig()}
    async with UpstreamSimulator(_config(faults=faults)) as sim, _client(sim) as client:
        answer = await _ask(client)
        with pytest.raises(openai.InternalServerError):
            await _ask(client, model="gpt-4o")

    assert answer.choices[0].finish_reason == "stop"


async def test_disconnect_drops_the_stream_before_done() -> None:
    config = _config(faults={MODEL: FaultConfig(disconnect_rate=1.0)})
    received: list[str] = []
    async with UpstreamSimulator(config) as sim, _client(sim) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIConnectionError):
            await _collect_content(stream, received)
        unary = await _ask(client)

    assert 1 <= len([r for r in received if r]) <= 3
    assert unary.choices[0].message.content.startswith("".join(received))


def test_spike_applies_only_at_its_rate() -> None:
    config = _config(faults={MODEL: FaultConfig(spike_rate=0.5, spike_ms=250.0)})
    planner = FaultPlanner(config)

    spikes = {planner.plan(MODEL).spike_ms for _ in range(200)}

    assert spikes == {0.0, 250.0}
    assert {planner.plan("gpt-4o").spike_ms for _ in range(20)} == {0.0}


def test_fault_sequence_is_reproducible_from_the_seed() -> None:
    faults = {MODEL: FaultConfig(error_rate=0.3, rate_limit_rate=0.2)}

    def outcomes(seed: int) -> list[str]:
        planner = FaultPlanner(_config(faults=faults, seed=seed))
        return [planner.plan(MODEL).outcome for _ in range(1000)]

    first = outcomes(seed=7)
    assert first == outcomes(seed=7)
    assert first != outcomes(seed=8)
    assert 240 <= first.count("server_error") <= 360
    assert 140 <= first.count("rate_limited") <= 260


# --- api key -----------------------------------------------------------------------------


async def test_api_key_is_enforced_when_set() -> None:
    async with UpstreamSimulator(_config(api_key="sk-right")) as sim:
        async with _client(sim, api_key="sk-wrong") as wrong:
            with pytest.raises(openai.AuthenticationError):
                await _ask(wrong)
        async with _client(sim, api_key="sk-right") as right:
            answer = await _ask(right)
        stats = await _get_json(sim, "/sim/stats")

    assert answer.choices[0].finish_reason == "stop"
    assert stats["total"] == 1


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "model", "expected"),
    [
        ("gpt-4o:error_rate=0.3,retry_after_s=2", "gpt-4o", FaultConfig(0.3, retry_after_s=2.0)),
        ("*:disconnect_rate=0.1", "*", FaultConfig(disconnect_rate=0.1)),
        (
            " gpt-4o-mini : spike_rate=1, spike_ms=500 ",
            "gpt-4o-mini",
            FaultConfig(spike_rate=1.0, spike_ms=500.0),
        ),
    ],
)
def test_parse_fault_spec_reads_model_and_fields(
    spec: str, model: str, expected: FaultConfig
) -> None:
    assert parse_fault_spec(spec) == (model, expected)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("error_rate=0.3", "needs a model"),
        ("gpt-4o:", "no field=value"),
        ("gpt-4o:error_rate", "not field=value"),
        ("gpt-4o:boom_rate=0.3", "unknown field 'boom_rate'"),
        ("gpt-4o:error_rate=lots", "not a number"),
        ("gpt-4o:error_rate=1.5", "error_rate must be a fraction"),
        ("gpt-4o:error_rate=0.1,error_rate=0.2", "given twice"),
        ("gpt-4o:error_rate=0.7,rate_limit_rate=0.7", "must not exceed 1"),
        ("gpt-4o:spike_ms=-5", "spike_ms must be"),
    ],
)
def test_parse_fault_spec_rejects_bad_input(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_fault_spec(spec)


def test_config_rejects_faults_for_unserved_models() -> None:
    with pytest.raises(ValueError, match="unknown models"):
        SimulatorConfig(faults={"gpt-5-typo": FaultConfig(error_rate=1.0)})


async def test_port_is_unavailable_until_started() -> None:
    simulator = UpstreamSimulator(_config())
    with pytest.raises(RuntimeError, match="not running"):
        _ = simulator.port
    async with simulator:
        assert simulator.base_url == f"http://127.0.0.1:{simulator.port}/v1"
