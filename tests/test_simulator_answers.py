"""The simulator answering from a labelled stream: one canned answer per cluster, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from semcache_simulator import SimulatorConfig, UpstreamSimulator, load_answer_stream
from semcache_simulator.answers import ChatMessage, compose_answer
from semcache_simulator.canned import answer_tag, canned_answer
from service.cache.verify.judges import ExactJudge

MODEL = "gpt-4o-mini"
STREAM = [
    {"q": "How do I start hacking?", "cluster": "c12"},
    {"q": "What is the best way to learn hacking?", "cluster": "c12"},
    {"q": "How do I start painting?", "cluster": "t7"},
    {"q": "What's the capital of France?", "cluster": "c40"},
]


def write_stream(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def stream_file(tmp_path: Path) -> Path:
    return write_stream(tmp_path / "stream.jsonl", STREAM)


@pytest.fixture
async def client(stream_file: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    config = SimulatorConfig(ttft_ms=0.0, ms_per_token=0.0, answers=load_answer_stream(stream_file))
    async with UpstreamSimulator(config) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        async with client:
            yield client


async def ask(client: openai.AsyncOpenAI, question: str, model: str = MODEL, **kw: Any) -> str:
    messages: Any = [{"role": "user", "content": question}]
    reply = await client.chat.completions.create(model=model, messages=messages, **kw)
    return reply.choices[0].message.content or ""


def test_load_answer_stream_keys_normalised_questions(stream_file: Path) -> None:
    answers = load_answer_stream(stream_file)
    assert answers["how do i start hacking"] == "c12"
    assert answers["what's the capital of france"] == "c40"
    assert len(answers) == 4


def test_load_answer_stream_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "fine", "cluster": "c1"}\n{"q": "no cluster"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_answer_stream(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_answer_stream(tmp_path / "missing.jsonl")


def test_canned_answers_are_deterministic_tagged_and_differ_across_clusters() -> None:
    assert canned_answer("c12") == canned_answer("c12")
    assert canned_answer("c12").startswith(answer_tag("c12") + " ")
    assert canned_answer("c12") != canned_answer("c13")


async def test_every_member_of_a_cluster_gets_the_same_answer(
    client: openai.AsyncOpenAI,
) -> None:
    first = await ask(client, "How do I start hacking?")
    reworded = await ask(client, "what is the best way to learn hacking")  # case, no "?"
    other_model = await ask(client, "  HOW do I start   hacking?? ", model="gpt-4o")
    assert first == reworded == other_model == canned_answer("c12")
    judge = ExactJudge()
    assert await judge.same("q", first, reworded) is True
    assert await judge.same("q", first, await ask(client, "How do I start painting?")) is False


async def test_streamed_answer_is_the_canned_answer(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "What's the capital of France?"}]
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == canned_answer("c40")


async def test_unknown_questions_are_answered_as_without_a_stream(
    client: openai.AsyncOpenAI,
) -> None:
    question = "What is the boiling point of water?"
    expected = compose_answer(MODEL, [ChatMessage("user", question)], None).text
    assert await ask(client, question) == expected
    assert "ANSWER[" not in expected


async def test_max_tokens_still_cuts_a_canned_answer(client: openai.AsyncOpenAI) -> None:
    cut = await ask(client, "How do I start hacking?", max_tokens=3)
    assert canned_answer("c12").startswith(cut) and len(cut) < len(canned_answer("c12"))


def test_the_cli_flag_serves_canned_answers(stream_file: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "service.cli", "simulate-upstream", "--port", str(port)]
    args += ["--ttft-ms", "0", "--ms-per-token", "0", "--answers", str(stream_file)]
    log = (tmp_path / "sim.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        for _ in range(200):
            try:
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "How do I start hacking?"}]
                )
                break
            except openai.APIConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("the simulator did not start")
        assert reply.choices[0].message.content == canned_answer("c12")
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_the_cli_rejects_a_bad_stream(tmp_path: Path) -> None:
    bad = write_stream(tmp_path / "bad.jsonl", [{"q": "x"}])
    args = [sys.executable, "-m", "service.cli", "simulate-upstream", "--answers", str(bad)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "bad.jsonl:1" in done.stderr
