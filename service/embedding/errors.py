"""Errors raised while locating, exporting or loading an embedding model.

    RuntimeError
    └── EmbeddingModelError   the model files are missing, unreadable or of an unsupported kind

These happen at start-up, before any request is served, so they sit outside the
per-request tree in `service.errors`.
"""

from __future__ import annotations


class EmbeddingModelError(RuntimeError):
    """The embedding model cannot be found, exported or loaded; the message says what to do."""
