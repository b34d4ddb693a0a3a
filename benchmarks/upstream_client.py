"""What each way of calling the provider costs: `semcache bench upstream`.

    semcache bench upstream [--calls 1000] [--warmup 50] [--out DIR]

A miss and a bypassed call both make one upstream call, and the client code
making it is part of what semcache adds (`bench overhead`, `bench peers`).
This benchmark calls the simulator (zero latency, its own process) from this
process in seven ways, the same questions, one call at a time, the order
rotated call by call so load from other work falls on all alike, after the
same warm-up each:

* `thin`: aiohttp posting the JSON body and parsing the JSON reply, the least
  any client does (the floor: each other unary row is stated against it);
* `sdk create`: the `openai` SDK as an application calls it,
  `chat.completions.create`, over the same aiohttp transport semcache uses;
* `sdk post`: the same client, posting the body semcache builds and reading
  the reply as plain JSON (what semcache did before `lean_http`);
* `semcache`: `OpenAICompatProvider.complete`, the provider the service
  calls (the SDK's client with `service.llm.lean_http`'s short cuts);
* `thin stream`, `sdk create stream`, `semcache stream`: the same question
  streamed, read line by line with each event's JSON parsed (the floor of
  the stream rows), through the SDK's `create(stream=True)`, and through
  `OpenAICompatProvider.stream` (its own event reader, `service.llm.sse`).

For each: the round trip's p50 and p95 (to the last event of a stream), and
the CPU time of this process per call (the event loop's own work for that
one call: nothing else runs), and both as differences from the thin
client's.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai

from benchmarks.data import data_file
from benchmarks.floors import ratio
from benchmarks.overhead import distinct_questions
from benchmarks.procs import run_simulator
from benchmarks.report import Row, machine_note, markdown_table, percentile, progress, write_results
from service.domain import ChatMessage, SamplingParams
from service.llm.aiohttp_transport import AiohttpTransport
from service.llm.openai_compat import OpenAICompatProvider
from service.llm.provider import ProviderCall

MODEL = "gpt-4o-mini"
TIMEOUT_S = 30.0
VARIANTS = (
    "thin",
    "sdk create",
    "sdk post",
    "semcache",
    "thin stream",
    "sdk create stream",
    "semcache stream",
)
Call = Callable[[str], Awaitable[object]]


def _body(question: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
    return {**body, "stream": True} if stream else body


class _Callers:
    """The ways of making one call, by variant name (`VARIANTS`)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._url = f"{base_url}/chat/completions"
        self._session = session
        self.sdk = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="unused",
            max_retries=0,
            timeout=TIMEOUT_S,
            http_client=openai.DefaultAsyncHttpxClient(transport=AiohttpTransport()),
        )
        self.provider = OpenAICompatProvider(base_url, None, TIMEOUT_S)

    def by_name(self) -> dict[str, Call]:
        return {
            "thin": self.thin,
            "sdk create": self.sdk_create,
            "sdk post": self.sdk_post,
            "semcache": self.semcache,
            "thin stream": self.thin_stream,
            "sdk create stream": self.sdk_create_stream,
            "semcache stream": self.semcache_stream,
        }

    async def thin(self, question: str) -> object:
        async with self._session.post(self._url, json=_body(question)) as reply:
            return json.loads(await reply.read())

    async def sdk_create(self, question: str) -> object:
        messages: Any = _body(question)["messages"]
        return await self.sdk.chat.completions.create(model=MODEL, messages=messages)

    async def sdk_post(self, question: str) -> object:
        options: Any = {"timeout": TIMEOUT_S}
        return await self.sdk.post(
            "/chat/completions", cast_to=object, body=_body(question), options=options
        )

    async def semcache(self, question: str) -> object:
        return await self.provider.complete(_call(question))

    async def thin_stream(self, question: str) -> object:
        """Each event's JSON, read line by line: the least a streaming client does."""
        events = 0
        async with self._session.post(self._url, json=_body(question, stream=True)) as reply:
            async for line in reply.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    json.loads(line[6:])
                    events += 1
        return events

    async def sdk_create_stream(self, question: str) -> object:
        messages: Any = _body(question)["messages"]
        stream = await self.sdk.chat.completions.create(model=MODEL, messages=messages, stream=True)
        return [chunk async for chunk in stream]

    async def semcache_stream(self, question: str) -> object:
        return [item async for item in self.provider.stream(_call(question))]

    async def close(self) -> None:
        await self.sdk.close()
        await self.provider.close()


def _call(question: str) -> ProviderCall:
    return ProviderCall(MODEL, (ChatMessage("user", question),), SamplingParams(), TIMEOUT_S)


def _clients(
    base_url: str, session: aiohttp.ClientSession
) -> tuple[dict[str, Call], list[Callable[[], Awaitable[None]]]]:
    """The callers, and what closes them."""
    callers = _Callers(base_url, session)
    return callers.by_name(), [callers.close]


async def measure(base_url: str, questions: list[str], warmup: int) -> dict[str, Any]:
    """Per variant: each call's round trip and CPU time (ms), order rotated call by call."""
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with aiohttp.ClientSession() as session:
        callers, closers = _clients(base_url, session)
        try:
            for index, question in enumerate(questions):
                turn = index % len(VARIANTS)
                for name in VARIANTS[turn:] + VARIANTS[:turn]:
                    cpu_start, started = time.process_time(), time.perf_counter()
                    await callers[name](question)
                    if index >= warmup:
                        wall[name].append((time.perf_counter() - started) * 1000)
                        cpu[name].append((time.process_time() - cpu_start) * 1000)
                if (index + 1) % max(1, len(questions) // 10) == 0:  # every tenth
                    progress(f"upstream: {index + 1}/{len(questions)} questions")
        finally:
            for close in closers:
                await close()
    return {"wall_ms": wall, "cpu_ms": cpu}


def summarise(measured: dict[str, Any]) -> list[Row]:
    """One row per variant, with its differences from the thin client's."""
    rows: list[Row] = []
    for name in VARIANTS:
        wall, cpu = measured["wall_ms"][name], measured["cpu_ms"][name]
        rows.append(
            {
                "variant": name,
                "calls": len(wall),
                "p50_ms": round(statistics.median(wall), 3),
                "p95_ms": round(percentile(wall, 0.95), 3),
                "cpu_ms": round(statistics.fmean(cpu), 3),
            }
        )
    floors = {row["variant"]: row for row in rows}
    for row in rows:
        thin = floors["thin stream" if str(row["variant"]).endswith("stream") else "thin"]
        row["p50_over_thin_ms"] = round(row["p50_ms"] - thin["p50_ms"], 3)
        row["cpu_over_thin_ms"] = round(row["cpu_ms"] - thin["cpu_ms"], 3)
        row["x_thin_p50"] = ratio(row["p50_ms"], thin["p50_ms"])
    return rows


def markdown(report: dict[str, Any]) -> str:
    columns = [
        ("variant", "client"),
        ("calls", "calls"),
        ("p50_ms", "round trip p50 ms"),
        ("p95_ms", "round trip p95 ms"),
        ("cpu_ms", "CPU ms per call"),
        ("p50_over_thin_ms", "p50 − thin p50 ms"),
        ("cpu_over_thin_ms", "CPU − thin CPU ms"),
        ("x_thin_p50", "p50 ÷ thin p50"),
    ]
    return f"{report['machine']}\n\n{markdown_table(report['rows'], columns)}"


def run(out_dir: Path, calls: int, warmup: int, data: Path | None = None) -> str:
    """Measure, write `upstream.json` / `upstream.md` under `out_dir`, return the table."""
    questions = distinct_questions(calls + warmup, data_file(data))
    with (
        tempfile.TemporaryDirectory(prefix="semcache-bench-upstream-") as workdir,
        run_simulator(Path(workdir)) as base_url,
    ):
        measured = asyncio.run(measure(base_url, questions, warmup))
    report = {"machine": machine_note(), "calls": calls, "warmup": warmup}
    report["rows"] = summarise(measured)
    table = markdown(report)
    write_results(out_dir, "upstream", report, table)
    return table
