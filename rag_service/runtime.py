"""The service layer shared by the API, the CLI and the worker: database, providers, operations."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from rag_service import db, instances
from rag_service.config import Settings
from rag_service.errors import Conflict, InvalidRequest
from rag_service.ingest.fetch import SizeLimits
from rag_service.ingest.items import Outcome
from rag_service.ingest.sync import (
    Progress,
    SyncContext,
    SyncResult,
    delete_one,
    index_one,
    run_sync,
)
from rag_service.instances import InstanceConfig
from rag_service.models import Instance, Job
from rag_service.providers.folder_source import FolderSource
from rag_service.providers.globs import PathFilter
from rag_service.providers.protocols import (
    Embedder,
    Generator,
    IndexSpec,
    ObjectSource,
    Reranker,
    VectorIndex,
)
from rag_service.retrieve.generate import Prompt, build_prompt
from rag_service.retrieve.rerank import WORKERS_AI_RERANKING_MODEL, RerankOptions, rerank
from rag_service.retrieve.search import RetrievalOptions, ScoredChunk, search

SAMPLE_DOCS = Path(__file__).resolve().parent / "sample_docs"
DEFAULT_INSTANCE = "default"
# How long the query path trusts an instance's settings without reading them again. Changes made
# through this process apply at once; another process's changes within this many seconds.
CONFIG_TTL_S = 2.0


# transformers' lazy module is not safe to import from two threads at once; loading is.
_IMPORTS = threading.Lock()


def normalise_source(source: str) -> str:
    """Folders are stored as absolute paths; URLs (s3://...) as given."""
    return source if "://" in source else str(Path(source).expanduser().resolve())


EmbedderFactory = Callable[[str, str | None], Embedder]
GeneratorFactory = Callable[[InstanceConfig], Generator]
RerankerFactory = Callable[[str], Reranker]  # a local cross-encoder by HF id or path


class Runtime:
    """Owns the database engine and the per-process provider caches."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder_factory: EmbedderFactory | None = None,
        generator_factory: GeneratorFactory | None = None,
        reranker_factory: RerankerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.engine: AsyncEngine = db.create_engine(settings.resolved_database_url)
        self.sessions = db.session_factory(self.engine)
        self._embedder_factory = embedder_factory or self._local_embedder
        self._generator_factory = generator_factory or self._local_generator
        self._reranker_factory = reranker_factory or self._local_reranker
        self._rerankers: dict[str, Reranker] = {}
        self._loading_reranker = asyncio.Lock()
        self._embedders: dict[tuple[str, str | None], Embedder] = {}
        self._generators: dict[str, Generator] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._configs: dict[str, tuple[float, InstanceConfig]] = {}
        self._sync_locks: dict[str, asyncio.Lock] = {}
        self._loading_embedder = asyncio.Lock()
        self._loading_generator = asyncio.Lock()
        self._opening_index = asyncio.Lock()

    async def start(self) -> Runtime:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await db.upgrade(self.engine)
        return self

    async def close(self) -> None:
        for index in self._indexes.values():
            await index.close()
        self._indexes.clear()
        await self.engine.dispose()

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Instances

    async def ensure_instance(
        self, instance_id: str, source: str, config: dict[str, Any] | None = None
    ) -> Instance:
        """Create the instance when missing; an existing one is left as it is, source included."""
        async with self.sessions() as session, session.begin():
            row = await session.get(Instance, instance_id)
            if row is None:
                cfg = {"backend": self.settings.backend, **(config or {})}
                row = await instances.create_instance(session, instance_id, source, cfg)
            return row

    async def ensure_default_instance(self, source: str | None = None) -> Instance:
        """The `default` instance; an explicit `source` re-points an existing one."""
        chosen = normalise_source(source or self.settings.source or str(SAMPLE_DOCS))
        row = await self.ensure_instance(DEFAULT_INSTANCE, chosen)
        if source and row.source != chosen:
            await self.set_source(DEFAULT_INSTANCE, chosen)
            row.source = chosen
        return row

    async def set_source(self, instance_id: str, source: str) -> None:
        """Point an instance at another source; the next sync drops what is no longer there."""
        async with self.sessions() as session, session.begin():
            row = await instances.get_instance(session, instance_id)
            row.source = normalise_source(source)
        self.forget_instance(instance_id)

    async def has_synced(self, instance_id: str) -> bool:
        async with self.sessions() as session:
            job = await session.scalar(
                select(Job.id).where(Job.instance_id == instance_id).limit(1)
            )
            return job is not None

    async def get_instance(self, instance_id: str) -> tuple[Instance, InstanceConfig]:
        async with self.sessions() as session:
            row = await instances.get_instance(session, instance_id)
            cfg = instances.instance_config(row)
        self._configs[instance_id] = (time.monotonic(), cfg)
        return row, cfg

    async def instance_config(self, instance_id: str) -> InstanceConfig:
        """The instance's settings for the query path: read at most every CONFIG_TTL_S seconds
        (a database round trip is a millisecond, a search's budget a few)."""
        cached = self._configs.get(instance_id)
        if cached is not None and time.monotonic() - cached[0] < CONFIG_TTL_S:
            return cached[1]
        return (await self.get_instance(instance_id))[1]

    def forget_instance(self, instance_id: str) -> None:
        """Read the instance's settings again on next use (after this process changed them)."""
        self._configs.pop(instance_id, None)

    # Providers

    async def embedder(self, cfg: InstanceConfig) -> Embedder:
        """Loaded once per (model, pooling), in a thread: loading takes seconds."""
        if cfg.backend == "cloudflare":
            cf_key = ("@cloudflare", cfg.embedding_model)
            if cf_key not in self._embedders:
                self._embedders[cf_key] = self._cloudflare_embedder(cfg)
            return self._embedders[cf_key]
        model = cfg.embedding_model or self.settings.embedding_model
        pooling = cfg.embedding_pooling or self.settings.embedding_pooling
        key = (model, pooling)
        async with self._loading_embedder:
            if key not in self._embedders:
                self._embedders[key] = await asyncio.to_thread(
                    self._embedder_factory, model, pooling
                )
        return self._embedders[key]

    async def generator(self, cfg: InstanceConfig) -> Generator:
        if cfg.backend == "cloudflare":
            cf_name = f"@cloudflare:{cfg.ai_search_model}"
            if cf_name not in self._generators:
                self._generators[cf_name] = self._cloudflare_generator(cfg)
            return self._generators[cf_name]
        name = cfg.ai_search_model or self.settings.generation_model
        async with self._loading_generator:
            if name not in self._generators:
                self._generators[name] = await asyncio.to_thread(self._generator_factory, cfg)
        return self._generators[name]

    async def reranker(self, cfg: InstanceConfig, model: str | None = None) -> Reranker:
        """Workers AI for `@cf/` models and cloudflare instances, else a local cross-encoder
        (`model`, the instance's `reranking_model`, RAGD_RERANKING_MODEL or bge-reranker-base)."""
        name = model or cfg.reranking_model or self.settings.reranking_model
        if cfg.backend == "cloudflare" or (name or "").startswith("@cf/"):
            cf_name = name if name and name.startswith("@cf/") else WORKERS_AI_RERANKING_MODEL
            if cf_name not in self._rerankers:
                self._rerankers[cf_name] = self._cloudflare_reranker(cf_name)
            return self._rerankers[cf_name]
        from rag_service.providers.local_reranker import DEFAULT_LOCAL_RERANKING_MODEL

        name = name or DEFAULT_LOCAL_RERANKING_MODEL
        async with self._loading_reranker:
            if name not in self._rerankers:
                self._rerankers[name] = await asyncio.to_thread(self._reranker_factory, name)
        return self._rerankers[name]

    async def index(self, instance_id: str, cfg: InstanceConfig) -> VectorIndex:
        """One open index per instance per process (a second one would hold stale vectors)."""
        async with self._opening_index:
            if instance_id not in self._indexes:
                from rag_service.providers.local_index import LocalIndex

                embedder = await self.embedder(cfg)
                spec = IndexSpec(embedder.model_id, embedder.pooling, embedder.dimensions)
                if cfg.backend == "cloudflare":
                    self._indexes[instance_id] = await self._vectorize_index(instance_id, cfg, spec)
                    return self._indexes[instance_id]
                path = self.settings.instance_dir(instance_id) / "index"
                self._indexes[instance_id] = await LocalIndex.aopen(
                    path, spec, keyword_tokenizer=cfg.indexing_options.keyword_tokenizer
                )
        return self._indexes[instance_id]

    def source(self, row: Instance, cfg: InstanceConfig) -> ObjectSource:
        params = cfg.source_params
        path_filter = PathFilter(tuple(params.include_items), tuple(params.exclude_items))
        if row.source.startswith("s3://") or cfg.type in ("r2", "s3"):
            return self._s3_source(row.source, cfg, path_filter)
        return FolderSource(Path(row.source), params.prefix, path_filter)

    def _s3_source(self, source: str, cfg: InstanceConfig, path_filter: PathFilter) -> ObjectSource:
        """`s3://bucket/prefix` on RAGD_S3_ENDPOINT_URL, or an R2 bucket name (AI Search's form)."""
        from rag_service.providers.s3_source import S3Source, parse_s3_url

        bucket, prefix = parse_s3_url(source) if source.startswith("s3://") else (source, "")
        prefix = cfg.source_params.prefix or prefix
        st = self.settings
        secret = st.s3_secret_access_key.get_secret_value() if st.s3_secret_access_key else None
        if st.s3_endpoint_url is None and cfg.type == "r2":
            if not st.cloudflare_account_id:
                raise InvalidRequest(
                    "an R2 source needs RAGD_CLOUDFLARE_ACCOUNT_ID or RAGD_S3_ENDPOINT_URL"
                )
            return S3Source.for_r2(
                st.cloudflare_account_id,
                bucket,
                prefix,
                path_filter,
                access_key_id=st.s3_access_key_id,
                secret_access_key=secret,
                with_metadata=bool(cfg.custom_metadata),
            )
        return S3Source(
            bucket,
            prefix,
            path_filter,
            endpoint_url=st.s3_endpoint_url,
            access_key_id=st.s3_access_key_id,
            secret_access_key=secret,
            region=st.s3_region,
            with_metadata=bool(cfg.custom_metadata),
        )

    def _cloudflare_embedder(self, cfg: InstanceConfig) -> Embedder:
        """Workers AI BGE, always CLS pooling (`mean` vectors do not mix with `cls` ones)."""
        from rag_service.providers.cloudflare import CloudflareAPI, WorkersAIEmbedder
        from rag_service.providers.cloudflare.workers_ai import DEFAULT_EMBEDDING_MODEL

        default = self.settings.embedding_model
        model = cfg.embedding_model or (
            default if default.startswith("@cf/") else DEFAULT_EMBEDDING_MODEL
        )
        if (cfg.embedding_pooling or self.settings.embedding_pooling) == "mean":
            raise InvalidRequest("Workers AI embeddings are made with cls pooling only; drop mean")
        return WorkersAIEmbedder(
            CloudflareAPI.for_settings(self.settings),
            model,
            query_instruction=self.settings.embedding_query_instruction,
        )

    def _cloudflare_generator(self, cfg: InstanceConfig) -> Generator:
        from rag_service.providers.cloudflare import CloudflareAPI, WorkersAIGenerator
        from rag_service.providers.cloudflare.workers_ai import DEFAULT_GENERATION_MODEL

        default = self.settings.generation_model
        model = cfg.ai_search_model or (
            default if default.startswith("@cf/") else DEFAULT_GENERATION_MODEL
        )
        return WorkersAIGenerator(CloudflareAPI.for_settings(self.settings), model)

    def _cloudflare_reranker(self, model: str) -> Reranker:
        from rag_service.providers.cloudflare import CloudflareAPI
        from rag_service.providers.cloudflare.workers_ai import WorkersAIReranker

        if not (self.settings.cloudflare_account_id and self.settings.cloudflare_api_token):
            raise InvalidRequest(
                f"reranking with {model} runs on Workers AI: set RAGD_CLOUDFLARE_ACCOUNT_ID and "
                "RAGD_CLOUDFLARE_API_TOKEN, or name a local cross-encoder (HF id or path)"
            )
        return WorkersAIReranker(CloudflareAPI.for_settings(self.settings), model)

    async def _vectorize_index(
        self, instance_id: str, cfg: InstanceConfig, spec: IndexSpec
    ) -> VectorIndex:
        """The instance's Vectorize index (created with its metadata indexes when missing),
        with its keyword side in the instance's data dir."""
        from rag_service.providers.cloudflare import CloudflareAPI, VectorizeIndex, index_name
        from rag_service.providers.cloudflare.vectorize import MetadataType

        kinds: dict[str, MetadataType] = {"text": "string", "boolean": "boolean"}
        custom = {f.field_name: kinds.get(f.data_type, "number") for f in cfg.custom_metadata}
        return await VectorizeIndex.open(
            CloudflareAPI.for_settings(self.settings),
            index_name(instance_id),
            spec,
            self.settings.instance_dir(instance_id) / "keyword",
            metadata_indexes=custom,
            keyword_tokenizer=cfg.indexing_options.keyword_tokenizer,
        )

    def _local_embedder(self, model: str, pooling: str | None) -> Embedder:
        with _IMPORTS:
            from rag_service.providers.local_embedder import LocalEmbedder

        return LocalEmbedder(
            model,
            pooling=pooling,  # type: ignore[arg-type]
            query_instruction=self.settings.embedding_query_instruction,
            batch_size=self.settings.embedding_batch_size,
        )

    def _local_reranker(self, model: str) -> Reranker:
        with _IMPORTS:
            from rag_service.providers.local_reranker import LocalReranker

        return LocalReranker(model)

    def _local_generator(self, cfg: InstanceConfig) -> Generator:
        name = cfg.ai_search_model or self.settings.generation_model
        if self.settings.generation_url:
            from rag_service.providers.openai_generator import OpenAIGenerator

            key = self.settings.generation_api_key
            return OpenAIGenerator(
                self.settings.generation_url, name, key.get_secret_value() if key else None
            )
        with _IMPORTS:
            from rag_service.providers.local_generator import LocalGenerator

        return LocalGenerator(name, cache_dir=self.settings.data_dir / "models")

    # Operations

    async def sync(
        self,
        instance_id: str,
        job_source: str = "user",
        progress: Progress | None = None,
        job_id: str | None = None,
    ) -> SyncResult:
        """Run one sync now; a second sync of the same instance is refused while one runs."""
        async with self._syncing(instance_id):
            ctx = await self.sync_context(instance_id)
            return await run_sync(ctx, job_source, progress, job_id)

    async def index_item(self, instance_id: str, key: str, job_source: str = "user") -> Outcome:
        """Index one object now, as a job of its own; a vanished object's item is deleted."""
        async with self._syncing(instance_id):
            ctx = await self.sync_context(instance_id)
            return await index_one(ctx, key, job_source)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        """Drop one item's chunks and row (the object stays in the source); False if unknown."""
        async with self._syncing(instance_id):
            ctx = await self.sync_context(instance_id)
            return await delete_one(ctx, key)

    @contextlib.asynccontextmanager
    async def _syncing(self, instance_id: str) -> AsyncIterator[None]:
        lock = self._sync_locks.setdefault(instance_id, asyncio.Lock())
        if lock.locked():
            raise Conflict(f"a sync of instance {instance_id!r} is already running")
        async with lock:
            yield

    async def sync_context(self, instance_id: str) -> SyncContext:
        row, cfg = await self.get_instance(instance_id)
        return SyncContext(
            instance_id=instance_id,
            config=cfg,
            source=self.source(row, cfg),
            embedder=await self.embedder(cfg),
            index=await self.index(instance_id, cfg),
            sessions=self.sessions,
            limits=SizeLimits(self.settings.max_file_bytes, self.settings.max_text_file_bytes),
            window_chunks=self.settings.ingest_window_chunks,
            instance_dir=self.settings.instance_dir(instance_id),
        )

    async def search(
        self,
        instance_id: str,
        query: str,
        opts: RetrievalOptions,
        reranking: RerankOptions | None = None,
    ) -> list[ScoredChunk]:
        """Retrieve, then rerank when `reranking` is given (a reranker that cannot be had is
        an error even when nothing was found)."""
        cfg = await self.instance_config(instance_id)
        reranker = await self.reranker(cfg, reranking.model) if reranking else None
        embedder = await self.embedder(cfg)
        chunks = await search(embedder, await self.index(instance_id, cfg), query, opts)
        if reranker is None or reranking is None:
            return chunks
        return await rerank(reranker, query, chunks, reranking.match_threshold)

    async def answer_prompt(
        self,
        instance_id: str,
        query: str,
        opts: RetrievalOptions,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        reranking: RerankOptions | None = None,
        search_query: str | None = None,
    ) -> tuple[Generator, Prompt]:
        """Retrieve (with `search_query`, a rewritten `query`, when given), then fit the
        chunks into the answer model's prompt by token count."""
        cfg = await self.instance_config(instance_id)
        if model:
            cfg = cfg.model_copy(update={"ai_search_model": model})
        chunks = await self.search(instance_id, search_query or query, opts, reranking)
        generator = await self.generator(cfg)
        max_tokens = self.settings.generation_max_tokens
        prompt = build_prompt(
            generator, query, chunks, max_tokens, system_prompt or cfg.system_prompt
        )
        return generator, prompt

    def default_options(self, cfg: InstanceConfig, **overrides: Any) -> RetrievalOptions:
        """The instance's retrieval settings with per-request overrides (None = keep)."""
        method = cfg.index_method
        kind = (
            "hybrid"
            if method.vector and method.keyword
            else "vector"
            if method.vector
            else "keyword"
        )
        base: dict[str, Any] = {
            "retrieval_type": kind,
            "fusion_method": cfg.fusion_method,
            "match_threshold": cfg.score_threshold,
            "max_num_results": cfg.max_num_results,
            "boost_by": cfg.boosts(),
            "keyword_match_mode": cfg.retrieval_options.keyword_match_mode,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return RetrievalOptions(**base)

    def is_syncing(self, instance_id: str) -> bool:
        lock = self._sync_locks.get(instance_id)
        return lock is not None and lock.locked()

    async def drop_index(self, instance_id: str) -> None:
        """Close and forget an instance's open index (before its files are removed)."""
        async with self._opening_index:
            index = self._indexes.pop(instance_id, None)
        if index is not None:
            await index.close()
