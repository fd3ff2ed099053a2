"""Settings: the one place that reads the environment."""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CORS_ORIGINS = [
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:8080",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    app_name: str = "智能客服系统"
    company_name: str = "示例商城"
    version: str = "1.0.0"

    host: str = "0.0.0.0"
    port: int = 8000
    reload: bool = False
    # Server processes run_server.py starts on the port (uvicorn's workers); 1: one process.
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "INFO"
    log_file: str | None = None
    # Observability (README, "Observability"). json: one JSON object a line (ours and uvicorn's).
    log_format: Literal["text", "json"] = "text"
    # /metrics: with METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` (or ADMIN_TOKEN) only;
    # unset, as the service-wide figures: open with AUTH_MODE=none, ADMIN_TOKEN with auth on.
    metrics_token: SecretStr | None = None
    # Several worker processes: a folder shared by all of them (must be in the environment: prometheus_client reads it).
    prometheus_multiproc_dir: str | None = None
    # OpenTelemetry traces over OTLP/HTTP (`<endpoint>/v1/traces`); unset: no tracing at all.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "c_app"

    # Storage. DATABASE_URL, when set, overrides the SQLite file at MEMORY_DB_PATH.
    memory_db_path: str = "./data/customer_service.db"
    database_url: str | None = None
    database_schema: str | None = None  # PostgreSQL search_path (tests isolate runs with it)
    db_pool_size: int = 10
    db_max_overflow: int = 20

    # Private cache (jieba's dictionary cache, term statistics), created mode 0700; never the shared temp dir.
    # Unset: "cache" in the SQLite file's folder (./data/cache by default).
    cache_dir: str | None = None

    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)  # any body but an upload
    # All request header names and values together (431 beyond); 16 KiB as Node.js and h11: room for a
    # large JWT (typically 1-4 KB) and cookies, far from the megabytes the parser would otherwise keep.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    upload_dir: str = "./uploads"
    max_file_size: int = 10 * 1024 * 1024
    # What one image may cost to decode, checked from its structure before decoding (bench/upload_bombs.py).
    # The defaults let an animation cost what the largest still (40 Mpx, RGBA) costs, no more.
    max_image_frames: int = Field(default=100, ge=1)
    max_image_total_pixels: int = Field(default=40_000_000, ge=1)  # frames x pixels of a frame
    max_image_decoded_bytes: int = Field(default=300 * 1024 * 1024, ge=1)  # pixels, and JPEG coefficients
    upload_decode_concurrency: int = Field(default=2, ge=1)  # images decoded or written again at once
    # Where upload files live (c_app/services/upload_storage.py): UPLOAD_DIR, or an S3-compatible bucket
    # shared by every replica (UPLOAD_DIR then holds only scratch files).
    upload_storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None  # unset: AWS's own endpoint for S3_REGION
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None  # unset: boto3's own chain (environment, profile, instance role)
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = "uploads/"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_CORS_ORIGINS))

    # Knowledge base and memory.
    load_sample_kb: bool = True
    sample_kb_path: str | None = None
    chat_memory_limit: int = Field(default=200, ge=1)
    # Set: the hand-picked score rule (top score >= ANSWER_THRESHOLD, leading by ANSWER_MARGIN) decides
    # instead of the fitted decision model (issue 11; kept to compare). None: the model decides.
    answer_threshold: float | None = None
    # The fitted decision model (bench/decision_fit.py writes one); None: the one shipped in the package.
    decision_model_path: str | None = None
    # Answering from the customer's own memories ("根据您之前留下的信息") risks less than quoting a wrong
    # policy, and a statement matches a question about it less closely, so its bar is lower.
    memory_answer_threshold: float = Field(default=0.5, ge=0, le=1)
    index_refresh_interval: float = Field(default=0.25, ge=0)
    # (USER_INDEX_CACHE_SIZE is gone: a user's memories are ranked per request from their rows.)
    # Knowledge-base index snapshot (in the database): written when the change log has moved this
    # many changes past the stored one (0: no snapshots), at most every interval seconds per
    # replica, and only for a knowledge base of at least min_entries (a smaller one builds in < 1 s).
    index_snapshot_changes: int = Field(default=1000, ge=0)
    index_snapshot_interval: float = Field(default=60.0, ge=0)
    index_snapshot_min_entries: int = Field(default=2000, ge=0)

    # Chat.
    llm_model: str = "deepseek-chat"
    llm_base_url: str = "https://api.deepseek.com"
    llm_api_key: SecretStr | None = None
    llm_timeout: float = Field(default=30.0, gt=0)  # seconds to connect, and between streamed chunks
    llm_max_retries: int = Field(default=1, ge=0)
    llm_temperature: float = Field(default=0.3, ge=0, le=2)
    llm_max_tokens: int = Field(default=1024, ge=16)
    llm_history_tokens: int = Field(default=2000, ge=0)  # budget for past messages in the prompt
    llm_max_tool_rounds: int = Field(default=3, ge=0)
    llm_send_images: bool = True  # off for models without vision
    pii_masking: bool = True  # personal data replaced by placeholders before a prompt leaves (c_app/privacy)
    # Remote image hosts allowed in image_url parts.
    image_url_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_message_chars: int = Field(default=4000, ge=1)
    max_message_parts: int = Field(default=10, ge=1)

    ws_heartbeat_seconds: float = Field(default=20.0, gt=0)  # WebSocket ping interval; 2 missed = dead

    auth_mode: Literal["none", "api_key", "jwt"] = "none"
    admin_token: str | None = None

    # Knowledge-base management (admin API and `c-app`).
    max_import_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # one uploaded import file
    import_batch_size: int = Field(default=500, ge=1)  # entries written per transaction

    # Security (issue 5). AUTH_MODE=api_key: API_KEYS, comma separated. AUTH_MODE=jwt: JWT_SECRET (HS256)
    # or JWT_PUBLIC_KEY (RS256, PEM text or a file path); `sub` is the user id.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: int = Field(default=0, ge=0, le=300)  # seconds of clock skew tolerated on exp
    # Signs /static/uploads URLs so an <img> tag works with auth on; unset: random per process (one replica only).
    url_signing_secret: SecretStr | None = None
    upload_url_ttl: int = Field(default=24 * 3600, ge=60)
    upload_quota_bytes: int = Field(default=200 * 1024 * 1024, ge=0)  # per user; 0 disables
    # "N/second|minute|hour|day" (the `limits` notation); "0" or empty disables. Counted per user and per address.
    rate_limit_stream: str = "30/minute"
    rate_limit_upload: str = "20/minute"
    rate_limit_memory: str = "60/minute"
    rate_limit_retrieve: str = "120/minute"  # POST /memory/retrieve: a search per request
    rate_limit_key_prefix: str = "c_app"
    # A client address may carry many users (an office behind one NAT): its limit is this many times a user's.
    rate_limit_address_factor: int = Field(default=5, ge=1)
    redis_url: str | None = None
    hsts_seconds: int = Field(default=0, ge=0)  # Strict-Transport-Security max-age; 0: header not sent
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)

    # Retrieval (issue 3). The KB answers directly only when its best hit also leads the runner-up
    # by ANSWER_MARGIN (bench/faq_eval.py --threshold-table; bench/README.md has the figures).
    answer_margin: float = Field(default=0.05, ge=0, le=1)
    # Optional dense retrieval: any OpenAI-compatible /embeddings endpoint. Unset: lexical only.
    embedding_base_url: str | None = None
    embedding_model: str = "text-embedding-3-small"
    embedding_api_key: SecretStr | None = None
    embedding_timeout: float = Field(default=5.0, gt=0)  # seconds; a query then falls back to lexical
    embedding_batch_size: int = Field(default=64, ge=1)
    # Cosine that unrelated texts reach with the model: rescaled to 0 in the fused score.
    embedding_min_similarity: float = Field(default=0.5, ge=0, lt=1)

    # Sensitive words (敏感词, issue 14): UTF-8, one word a line, `#` comments; unset: no checks.
    sensitive_words_file: str | None = None
    sensitive_reply: str = Field(default="抱歉，您的消息包含不当内容，请修改后再试。", min_length=1)
    sensitive_reload_interval: float = Field(default=2.0, ge=0)  # seconds between looks at the file
    sensitive_mask_char: str = Field(default="*", min_length=1, max_length=1)

    # Retention (issue 14): sessions last active, chat memories and uploads created more than
    # RETENTION_DAYS ago are purged by a periodic job on one replica at a time. Unset: kept forever.
    retention_days: int | None = Field(default=None, ge=1)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    retention_batch_size: int = Field(default=500, ge=1)  # rows removed per transaction

    # Human agents' business hours (issue 10, services/availability.py): "mon-fri 09:00-21:00; sat 10:00-16:00";
    # empty: always open. AGENT_CLOSED_DATES: holidays, comma separated ISO dates (2026-10-01,2026-10-02).
    agent_hours: str = ""
    agent_timezone: str = "Asia/Shanghai"
    agent_closed_dates: Annotated[list[date], NoDecode] = Field(default_factory=list)

    # Human agents (issue 10). AGENT_KEYS (AUTH_MODE=api_key): "key:agent_id:显示名[:supervisor]", comma separated.
    agent_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    agent_assignment: Literal["auto", "claim"] = "auto"
    agent_max_concurrent: int = Field(default=5, ge=1, le=50)
    agent_heartbeat_timeout: float = Field(default=60.0, gt=0)  # seconds without a sign of life: away
    # AGENT_HOURS, AGENT_TIMEZONE, AGENT_CLOSED_DATES: above (services/availability.hours_from_settings).
    live_event_ttl_hours: float = Field(default=24.0, gt=0)  # how long a stream can resume (Last-Event-ID)
    # The event bus (c_app/services/bus.py): auto = Redis when REDIS_URL is set, else in-process.
    bus_backend: Literal["auto", "memory", "redis", "postgres"] = "auto"
    bus_channel_prefix: str = "c_app"

    # Fleet (issue 13): SIGTERM drains (no new turns, streams in flight get this long, then stored as
    # interrupted); X-Replica names the process on every answer (unset: the host name).
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    replica_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")

    # Background jobs (c_app/services/jobs.py): procrastinate on PostgreSQL, in-process on SQLite.
    jobs_worker: bool = True  # run jobs in this process (false: a replica that only submits them)
    jobs_concurrency: int = Field(default=2, ge=1)
    jobs_stalled_after_seconds: float = Field(default=30.0, ge=1)  # no heartbeat that long: job retried

    @field_validator("api_keys", "agent_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("agent_closed_dates", mode="before")
    @classmethod
    def _split_dates(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in re.split(r'[\[\]",;\s]+', value) if item.strip()]
        return value

    @field_validator("cors_origins", "image_url_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL: DATABASE_URL (driver added if missing) or the SQLite file."""
        if self.database_url:
            url = self.database_url
            for plain, driver in (
                ("postgresql://", "postgresql+asyncpg://"),
                ("postgres://", "postgresql+asyncpg://"),
                ("sqlite://", "sqlite+aiosqlite://"),
            ):
                if url.startswith(plain):
                    return driver + url[len(plain) :]
            return url
        return f"sqlite+aiosqlite:///{Path(self.memory_db_path).expanduser().resolve()}"

    @property
    def cache_path(self) -> Path:
        """CACHE_DIR, or the "cache" folder next to the SQLite file."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve()
        return Path(self.memory_db_path).expanduser().resolve().parent / "cache"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        """Create the upload folder and the SQLite file's folder when missing."""
        Path(self.upload_dir).mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            Path(self.memory_db_path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment (and .env), read on first call rather than at import."""
    return Settings()
