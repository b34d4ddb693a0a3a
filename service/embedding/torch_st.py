"""The reference backend: sentence-transformers on torch, fp32.

Slow to start (seconds, ~500 MB) and ~10 ms per sentence on one thread, but it
is the model exactly as published; the ONNX backend is checked against it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.embedding.base import Vectors
from service.embedding.errors import EmbeddingModelError
from service.embedding.model_files import model_name, require_model_dir


class SentenceTransformerEmbedder:
    """Embeds with sentence-transformers on torch; `model_id` ends in `/st-fp32`.

    Raises:
        EmbeddingModelError: `model_path` is not a loadable model directory.
    """

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None) -> None:
        require_model_dir(model_path)
        self._model = _load_sentence_transformer(model_path, device, threads)
        self._model_id = f"{model_name(model_path)}/st-fp32"
        self._dim = int(self._model.get_embedding_dimension())

    @property
    def model_id(self) -> str:
        """Model name and backend, e.g. `all-MiniLM-L6-v2/st-fp32`."""
        return self._model_id

    @property
    def dim(self) -> int:
        """Length of each vector (384 for all-MiniLM-L6-v2)."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return `(len(texts), dim)` float32 rows, each L2-normalised."""
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _load_sentence_transformer(model_path: Path, device: str, threads: int | None) -> Any:
    # Never reach for the hub: the model is local, and the service may run with no network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    if threads is not None:
        # Process-wide: torch has one intra-op pool per process.
        torch.set_num_threads(threads)
    try:
        return SentenceTransformer(str(model_path), device=device)
    except (OSError, ValueError) as error:
        raise EmbeddingModelError(f"cannot load the model in {model_path}: {error}") from error
