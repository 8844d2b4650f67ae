"""The provider registry: one factory per kind (embedder, generator, reranker, index, source),
each product made once per process and kept. Tests and the CLI pass their own factories."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rag_service import uploads
from rag_service.config import LOCAL_EMBEDDING_MODEL, Settings
from rag_service.errors import BackendError, InvalidRequest, RagError
from rag_service.instances import InstanceConfig, SourceParams
from rag_service.models import Instance
from rag_service.providers.cloudflare.workers_ai import (
    CONTEXT_WINDOWS,
    EMBEDDING_DIMENSIONS,
    WORKERS_AI_RERANKING_MODEL,
)
from rag_service.providers.folder_source import FolderSource
from rag_service.providers.globs import PathFilter
from rag_service.providers.local_models import DEFAULT_LOCAL_RERANKING_MODEL, SMOLLM2
from rag_service.providers.protocols import (
    Embedder,
    Generator,
    IndexSpec,
    ObjectSource,
    Reranker,
    UploadStore,
    VectorIndex,
)
from rag_service.retrieve.extractive import EXTRACTIVE_MODEL

if TYPE_CHECKING:
    from rag_service.providers.s3_source import S3Source

EmbedderFactory = Callable[[str, str | None], Embedder]  # (model, pooling)
GeneratorFactory = Callable[[InstanceConfig], Generator]
RerankerFactory = Callable[[str], Reranker]  # a local cross-encoder by HF id or path

log = logging.getLogger("ragd.providers")
FAILED_LOAD_TTL_S = 60.0  # a model that failed to load is not tried again for this long
SERVER_DEFAULT_MODEL = "default"  # sent to RAGD_GENERATION_URL when no model is named
K = TypeVar("K")
P = TypeVar("P")
# transformers' lazy module is not safe to import from two threads at once; loading is.
_IMPORTS = threading.Lock()


class Providers:
    """Makes and keeps the providers an instance's settings ask for. The local factories are
    the defaults; cloudflare instances always use Workers AI and Vectorize."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder_factory: EmbedderFactory | None = None,
        generator_factory: GeneratorFactory | None = None,
        reranker_factory: RerankerFactory | None = None,
    ) -> None:
        self.settings = settings
        self._embedder_factory = embedder_factory or self.local_embedder
        self._generator_factory = generator_factory or self.local_generator
        self._reranker_factory = reranker_factory or self.local_reranker
        self._embedders: dict[tuple[str, str | None], Embedder] = {}
        self._generators: dict[str, Generator] = {}
        self._rerankers: dict[str, Reranker] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._loading = asyncio.Lock()  # model loads take seconds: one at a time
        self._opening_index = asyncio.Lock()
        self._failed: dict[str, tuple[float, RagError]] = {}
        configured = (settings.embedding_model, settings.generation_model, settings.reranking_model)
        self.allowed_models = frozenset(
            {
                *(name for name in configured if name),
                LOCAL_EMBEDDING_MODEL,
                SMOLLM2,
                EXTRACTIVE_MODEL,
                DEFAULT_LOCAL_RERANKING_MODEL,
                WORKERS_AI_RERANKING_MODEL,
                *EMBEDDING_DIMENSIONS,
                *CONTEXT_WINDOWS,
                *settings.allowed_models,
            }
        )

    def check_model(self, name: str | None) -> None:
        """A model a request or an instance names must be one the operator allows: no
        filesystem paths or hub ids of the caller's choosing (each would load another copy)."""
        if name and name not in self.allowed_models:
            raise InvalidRequest(
                f"model {name!r} is not available here: the operator lists the models this "
                "server may load in RAGD_ALLOWED_MODELS"
            )

    async def embedder(self, cfg: InstanceConfig) -> Embedder:
        """Loaded once per (model, pooling), in a thread."""
        if cfg.backend == "cloudflare":
            cf_key = ("@cloudflare", cfg.embedding_model)
            return self._kept(self._embedders, cf_key, lambda: self._cloudflare_embedder(cfg))
        self.check_model(cfg.embedding_model)
        model = cfg.embedding_model or self.settings.embedding_model
        pooling = cfg.embedding_pooling or self.settings.embedding_pooling
        return await self._load(
            self._embedders, (model, pooling), model, lambda: self._embedder_factory(model, pooling)
        )

    async def generator(self, cfg: InstanceConfig, model: str | None = None) -> Generator:
        """The answer model: `model`, else the instance's, else the settings' default."""
        self.check_model(model or cfg.ai_search_model)
        if model:
            cfg = cfg.model_copy(update={"ai_search_model": model})
        if cfg.backend == "cloudflare":
            name = f"@cloudflare:{cfg.ai_search_model}"
            return self._kept(self._generators, name, lambda: self._cloudflare_generator(cfg))
        name = self.generation_name(cfg)
        cfg = cfg.model_copy(update={"ai_search_model": name})
        return await self._load(self._generators, name, name, lambda: self._generator_factory(cfg))

    async def reranker(self, cfg: InstanceConfig, model: str | None = None) -> Reranker:
        """Workers AI for `@cf/` models and cloudflare instances, else a local cross-encoder
        (`model`, the instance's `reranking_model`, RAGD_RERANKING_MODEL or bge-reranker-base)."""
        self.check_model(model or cfg.reranking_model)
        name = model or cfg.reranking_model or self.settings.reranking_model
        if cfg.backend == "cloudflare" or (name or "").startswith("@cf/"):
            cf_name = name if name and name.startswith("@cf/") else WORKERS_AI_RERANKING_MODEL
            return self._kept(self._rerankers, cf_name, lambda: self._cloudflare_reranker(cf_name))
        local = name or DEFAULT_LOCAL_RERANKING_MODEL
        return await self._load(
            self._rerankers, local, local, lambda: self._reranker_factory(local)
        )

    async def index(self, instance_id: str, cfg: InstanceConfig) -> VectorIndex:
        """One open index per instance per process (a second one would hold stale vectors)."""
        async with self._opening_index:
            if instance_id not in self._indexes:
                embedder = await self.embedder(cfg)
                spec = IndexSpec(embedder.model_id, embedder.pooling, embedder.dimensions)
                self._indexes[instance_id] = await self._open_index(instance_id, cfg, spec)
        return self._indexes[instance_id]

    async def drop_index(self, instance_id: str) -> None:
        """Close and forget an instance's open index (before its files are removed)."""
        async with self._opening_index:
            index = self._indexes.pop(instance_id, None)
        if index is not None:
            await index.close()

    async def close(self) -> None:
        for index in self._indexes.values():
            await index.close()
        self._indexes.clear()

    def source(self, row: Instance, cfg: InstanceConfig) -> ObjectSource:
        params = cfg.source_params
        path_filter = PathFilter(tuple(params.include_items), tuple(params.exclude_items))
        if (root := uploads.bucket_root(self.settings, row)) is not None:
            return self._s3_source(row.source, cfg, path_filter, root)
        if row.source.startswith("s3://") or cfg.type in ("r2", "s3"):
            return self._s3_source(row.source, cfg, path_filter)
        return FolderSource(Path(row.source), params.prefix, path_filter)

    def upload_store(self, row: Instance, cfg: InstanceConfig) -> UploadStore:
        """Where the uploads of an instance created without a source go: its area of
        RAGD_UPLOADS_BUCKET, or its folder in the data dir (400 for any other instance)."""
        if not uploads.is_managed(self.settings, row):
            raise uploads.refuse_upload(row)
        store = self.source(row, cfg.model_copy(update={"source_params": SourceParams()}))
        assert isinstance(store, UploadStore)
        return store

    async def _load(self, kept: dict[K, P], key: K, name: str, make: Callable[[], P]) -> P:
        """Load once, in a thread, one load at a time. A failure is remembered for
        FAILED_LOAD_TTL_S (every request would otherwise wait for it again) and reported
        without the library's own text, which names files."""
        async with self._loading:
            if key in kept:
                return kept[key]
            failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_TTL_S:
                raise failed[1]
            try:
                kept[key] = await asyncio.to_thread(make)
            except RagError as exc:
                self._failed[name] = (time.monotonic(), exc)
                raise
            except Exception as exc:  # any library error while loading
                log.error("loading model %r failed: %s", name, exc)
                error = BackendError(f"model {name!r} could not be loaded (see the server log)")
                self._failed[name] = (time.monotonic(), error)
                raise error from None
            return kept[key]

    @staticmethod
    def _kept(kept: dict[K, P], key: K, make: Callable[[], P]) -> P:
        if key not in kept:
            kept[key] = make()
        return kept[key]

    async def _open_index(
        self, instance_id: str, cfg: InstanceConfig, spec: IndexSpec
    ) -> VectorIndex:
        tokenizer = cfg.indexing_options.keyword_tokenizer
        folder = self.settings.instance_dir(instance_id)
        from rag_service.providers.pg_keyword import PgKeywordIndex, SplitIndex

        keyword = None  # RAGD_KEYWORD_INDEX=postgres: keyword search in the shared database
        if self.settings.keyword_index == "postgres":
            url = self.settings.resolved_database_url
            keyword = await PgKeywordIndex.open(url, instance_id, tokenizer)
        if cfg.backend != "cloudflare":
            from rag_service.providers.local_index import LocalIndex

            local = await LocalIndex.aopen(
                folder / "index", spec, tokenizer, ann_threshold=self.settings.ann_threshold
            )
            return local if keyword is None else SplitIndex(local, keyword)
        # The instance's Vectorize index (created with its metadata indexes when missing),
        # with its keyword side in the database or in the instance's data dir.
        from rag_service.providers.cloudflare import CloudflareAPI, VectorizeIndex, index_name
        from rag_service.providers.cloudflare.vectorize import MetadataType

        kinds: dict[str, MetadataType] = {"text": "string", "boolean": "boolean"}
        custom = {f.field_name: kinds.get(f.data_type, "number") for f in cfg.custom_metadata}
        return await VectorizeIndex.open(
            CloudflareAPI.for_settings(self.settings),
            index_name(instance_id),
            spec,
            folder / "keyword",
            metadata_indexes=custom,
            keyword_tokenizer=tokenizer,
            keyword=keyword,
        )

    def _s3_source(
        self, source: str, cfg: InstanceConfig, path_filter: PathFilter, root: str = ""
    ) -> S3Source:
        """`s3://bucket/prefix` on RAGD_S3_ENDPOINT_URL, or an R2 bucket name (AI Search's form).
        With `root` (a managed instance's uploads area) keys are relative to it."""
        from rag_service.providers.s3_source import S3Source, parse_s3_url

        bucket, prefix = parse_s3_url(source) if source.startswith("s3://") else (source, "")
        prefix = cfg.source_params.prefix if root else cfg.source_params.prefix or prefix
        st = self.settings
        secret = st.s3_secret_access_key.get_secret_value() if st.s3_secret_access_key else None
        credentials = {"access_key_id": st.s3_access_key_id, "secret_access_key": secret}
        with_metadata = bool(cfg.custom_metadata)
        if st.s3_endpoint_url is None and cfg.type == "r2":
            if not st.cloudflare_account_id:
                raise InvalidRequest(
                    "an R2 source needs RAGD_CLOUDFLARE_ACCOUNT_ID or RAGD_S3_ENDPOINT_URL"
                )
            jurisdiction = cfg.source_params.r2_jurisdiction
            return S3Source.for_r2(
                st.cloudflare_account_id,
                bucket,
                prefix,
                path_filter,
                jurisdiction=None if jurisdiction in (None, "default") else jurisdiction,
                with_metadata=with_metadata,
                root=root,
                **credentials,
            )
        return S3Source(
            bucket,
            prefix,
            path_filter,
            endpoint_url=st.s3_endpoint_url,
            region=st.s3_region,
            with_metadata=with_metadata,
            root=root,
            **credentials,
        )

    def _cloudflare_embedder(self, cfg: InstanceConfig) -> Embedder:
        """Workers AI BGE, always CLS pooling (`mean` vectors do not mix with `cls` ones)."""
        from rag_service.providers.cloudflare import CloudflareAPI, WorkersAIEmbedder
        from rag_service.providers.cloudflare.workers_ai import WORKERS_AI_EMBEDDING_MODEL

        default = self.settings.embedding_model
        model = cfg.embedding_model or (
            default if default.startswith("@cf/") else WORKERS_AI_EMBEDDING_MODEL
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
        from rag_service.providers.cloudflare.workers_ai import WORKERS_AI_GENERATION_MODEL

        default = self.settings.generation_model or ""
        named = cfg.ai_search_model if cfg.ai_search_model != EXTRACTIVE_MODEL else None
        model = named or (default if default.startswith("@cf/") else WORKERS_AI_GENERATION_MODEL)
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

    def local_embedder(self, model: str, pooling: str | None) -> Embedder:
        runtime = self.settings.embedding_runtime
        with _IMPORTS:
            from rag_service.providers.local_embedder import LocalEmbedder

        make: Callable[..., Embedder] = partial(
            LocalEmbedder, precision=self.settings.embedding_precision
        )
        if runtime != "torch":
            with _IMPORTS:
                from rag_service.providers.onnx_embedder import OnnxEmbedder
            cache = self.settings.data_dir / "models" / "onnx"
            make = partial(OnnxEmbedder, cache_dir=cache, int8=runtime == "onnx-int8")
        return make(
            model,
            pooling=pooling,
            query_instruction=self.settings.embedding_query_instruction,
            batch_size=self.settings.embedding_batch_size,
        )

    def local_reranker(self, model: str) -> Reranker:
        with _IMPORTS:
            from rag_service.providers.local_reranker import LocalReranker

        return LocalReranker(model)

    def extracts(self, cfg: InstanceConfig, model: str | None) -> bool:
        """Whether answers are extracted rather than generated: when asked for by name, and
        by default on the local backend with no answer server configured."""
        chosen = model or cfg.ai_search_model
        if chosen:
            return chosen == EXTRACTIVE_MODEL
        if cfg.backend == "cloudflare":
            return False
        if self.settings.generation_model:
            return self.settings.generation_model == EXTRACTIVE_MODEL
        return not self.settings.generation_url

    def generation_name(self, cfg: InstanceConfig) -> str:
        """The language model for the instance: its own, the settings', else the server's
        default model or the shipped SmolLM2 (the extractive answerer is no language model:
        what needs one, query rewrite, gets these)."""
        name = cfg.ai_search_model or self.settings.generation_model
        if name and name != EXTRACTIVE_MODEL:
            return name
        return SERVER_DEFAULT_MODEL if self.settings.generation_url else SMOLLM2

    def local_generator(self, cfg: InstanceConfig) -> Generator:
        """An OpenAI-compatible server when RAGD_GENERATION_URL is set, else in-process."""
        name = self.generation_name(cfg)
        if self.settings.generation_url:
            from rag_service.providers.openai_generator import OpenAIGenerator

            key = self.settings.generation_api_key
            return OpenAIGenerator(
                self.settings.generation_url, name, key.get_secret_value() if key else None
            )
        with _IMPORTS:
            from rag_service.providers.local_generator import LocalGenerator

        return LocalGenerator(name, cache_dir=self.settings.data_dir / "models")
