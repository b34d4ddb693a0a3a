"""The test fixtures themselves: what every end-to-end test relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from service.embedding.base import Embedder
from tests.conftest import make_settings


def test_test_settings_ignore_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SEMCACHE_SIMILARITY_MIN", "0.99")
    monkeypatch.setenv("SEMCACHE_NEAR_MISS_GUARD", "false")
    monkeypatch.setenv("SEMCACHE_MAX_PROMPT_BYTES", "7")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-shell")
    settings = make_settings("edge", tmp_path, "http://127.0.0.1:9/v1")
    assert settings.similarity_min is None
    assert settings.near_miss_guard is True
    assert settings.max_prompt_bytes == Settings.model_fields["max_prompt_bytes"].default
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == "test-key"


def test_the_end_to_end_tests_embed_with_the_default_backend(embedder: Embedder) -> None:
    default = Settings.model_fields["embedding_backend"].default
    assert default == "onnx-int8"
    assert embedder.model_id.endswith(f"/{default}")
