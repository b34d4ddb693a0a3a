"""Speed and agreement of the embedding backends, measured side by side.

    python -m benchmarks.embedder_speed [--pairs 4000] [--rounds 5]

Every backend runs on one thread. Rounds interleave the backends, so load from
other processes on the machine falls on all of them alike. Prints batch-1
latency (p50/p95), batched throughput, the cosine between int8 and fp32
vectors of the same text, and how often int8 and fp32 make the same hit/miss
decision on Quora question pairs at thresholds 0.80-0.95. The pairs are read
in place (`--pairs-path`, else qqp_dev.jsonl in `SEMCACHE_BENCH_DATA_DIR`, see
`benchmarks.data`) and never copied.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.data import data_file
from service.embedding.base import Embedder, Vectors
from service.embedding.factory import EmbeddingBackend, build_embedder

BACKENDS: tuple[EmbeddingBackend, ...] = ("torch", "onnx-fp32", "onnx-int8")
THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
LATENCY_SENTENCES = 100
THROUGHPUT_SENTENCES = 256


def read_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    """The first `limit` question pairs of a `{"a", "b", ...}` JSON-lines file."""
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if len(pairs) == limit:
                break
            row = json.loads(line)
            pairs.append((row["a"], row["b"]))
    return pairs


def batch1_latencies_ms(embedder: Embedder, texts: Sequence[str]) -> list[float]:
    """Milliseconds for each text embedded on its own."""
    latencies_ms = []
    for text in texts:
        started_s = time.perf_counter()
        embedder.embed([text])
        latencies_ms.append((time.perf_counter() - started_s) * 1000)
    return latencies_ms


def throughput_per_s(embedder: Embedder, texts: Sequence[str]) -> float:
    """Texts per second when all of `texts` are passed in one call."""
    started_s = time.perf_counter()
    embedder.embed(texts)
    return len(texts) / (time.perf_counter() - started_s)


def measure_speed(embedders: dict[str, Embedder], texts: Sequence[str], rounds: int) -> None:
    """Print batch-1 p50/p95 latency and the median batched throughput per backend."""
    latencies_ms: dict[str, list[float]] = {name: [] for name in embedders}
    throughputs: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            latencies_ms[name] += batch1_latencies_ms(embedder, texts[:LATENCY_SENTENCES])
            throughputs[name].append(throughput_per_s(embedder, texts[:THROUGHPUT_SENTENCES]))
    print(f"{'backend':<28}{'p50 ms':>8}{'p95 ms':>8}{'batched /s':>12}")
    for name in embedders:
        p50_ms, p95_ms = np.percentile(latencies_ms[name], [50, 95])
        rate = float(np.median(throughputs[name]))
        print(f"{embedders[name].model_id:<28}{p50_ms:>8.2f}{p95_ms:>8.2f}{rate:>12.0f}")


def pair_similarities(vectors: Vectors) -> Vectors:
    """Cosine similarity of each pair, given rows a0, b0, a1, b1, ..."""
    return np.asarray(np.sum(vectors[0::2] * vectors[1::2], axis=1), dtype=np.float32)


def measure_agreement(fp32: Embedder, int8: Embedder, pairs: Sequence[tuple[str, str]]) -> None:
    """Print int8-vs-fp32 vector cosines and hit/miss decision agreement per threshold."""
    texts = [text for pair in pairs for text in pair]
    fp32_vectors, int8_vectors = fp32.embed(texts), int8.embed(texts)
    cosines = np.sum(fp32_vectors * int8_vectors, axis=1)
    print(f"\nint8 vs fp32, {len(texts)} texts: cosine mean {cosines.mean():.4f}", end="")
    print(f", p1 {np.percentile(cosines, 1):.4f}, min {cosines.min():.4f}")
    fp32_similarity = pair_similarities(fp32_vectors)
    int8_similarity = pair_similarities(int8_vectors)
    print(f"{'similarity_min':>14}{'agree':>8}{'fp32 hits':>11}{'int8 hits':>11}")
    for threshold in THRESHOLDS:
        fp32_hits = fp32_similarity >= threshold
        int8_hits = int8_similarity >= threshold
        agree = float(np.mean(fp32_hits == int8_hits))
        print(f"{threshold:>14.2f}{agree:>8.2%}{fp32_hits.sum():>11}{int8_hits.sum():>11}")


def build_all(cache_dir: Path) -> dict[str, Embedder]:
    """Each backend on one thread, printing how long each took to start."""
    embedders: dict[str, Embedder] = {}
    for backend in BACKENDS:
        started_s = time.perf_counter()
        embedders[backend] = build_embedder(backend, None, cache_dir, threads=1)
        print(f"{backend}: ready in {time.perf_counter() - started_s:.2f} s")
    return embedders


def main() -> None:
    """Parse arguments, then measure speed and agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs-path", type=Path, help="default: qqp_dev.jsonl in the data dir")
    parser.add_argument("--pairs", type=int, default=4000, help="question pairs for agreement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    parser.add_argument("--cache-dir", type=Path, default=Path(".semcache/onnx"))
    args = parser.parse_args()
    pairs = read_pairs(data_file(args.pairs_path, flag="--pairs-path"), args.pairs)
    embedders = build_all(args.cache_dir)
    measure_speed(embedders, [a for a, _ in pairs], args.rounds)
    measure_agreement(embedders["onnx-fp32"], embedders["onnx-int8"], pairs)


if __name__ == "__main__":
    main()
