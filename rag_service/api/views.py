"""Instances, jobs, job logs and items in AI Search's JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rag_service.config import Settings
from rag_service.ingest.index import folder_of
from rag_service.instances import InstanceConfig
from rag_service.models import ITEM_STATUSES, Instance, Item, Job, JobLog
from rag_service.namespaces import split_key
from rag_service.retrieve.cache import DEFAULT_TTL

# Reported when an instance sets no cache_ttl: what the cache then keeps (AI Search's default).
CACHE_TTL = DEFAULT_TTL
ENGINE_VERSION = 1.0


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def instance_type(row: Instance, cfg: InstanceConfig) -> str | None:
    """AI Search knows `r2` and `web-crawler`; a bucket (R2 or S3) is `r2`, a folder none."""
    return "r2" if cfg.type in ("r2", "s3") or row.source.startswith("s3://") else None


def instance_view(
    row: Instance, cfg: InstanceConfig, settings: Settings, last_activity: datetime | None = None
) -> dict[str, Any]:
    return {
        "id": row.name,
        "created_at": iso(row.created_at),
        "modified_at": iso(row.modified_at),
        "last_activity": iso(last_activity),
        "namespace": row.namespace,
        "type": instance_type(row, cfg),
        "source": row.source,
        "source_params": cfg.source_params.model_dump(),
        "status": "paused" if cfg.paused else "active",
        "enable": True,
        "paused": cfg.paused,
        "ai_search_model": cfg.ai_search_model or settings.generation_model,
        "embedding_model": cfg.embedding_model or settings.embedding_model,
        "chunk": cfg.chunk,
        "chunk_size": cfg.chunk_size,
        "chunk_overlap": cfg.chunk_overlap,
        "rewrite_query": cfg.rewrite_query,
        "rewrite_model": cfg.rewrite_model,
        "split_exclusions": cfg.split_exclusions,
        "reranking": cfg.reranking,
        "reranking_model": cfg.reranking_model,
        "max_num_results": cfg.max_num_results,
        "score_threshold": cfg.score_threshold,
        "index_method": cfg.index_method.model_dump(),
        "hybrid_search_enabled": cfg.index_method.vector and cfg.index_method.keyword,
        "fusion_method": cfg.fusion_method,
        "indexing_options": cfg.indexing_options.model_dump(),
        "retrieval_options": cfg.retrieval_options.model_dump(exclude_none=True),
        "cache": cfg.cache,
        "cache_threshold": cfg.cache_threshold,
        "cache_ttl": getattr(cfg, "cache_ttl", None) or CACHE_TTL,
        "summarization": False,
        "engine_version": ENGINE_VERSION,
        "sync_interval": cfg.sync_interval,
        "custom_metadata": [f.model_dump() for f in cfg.custom_metadata],
        "system_prompt_aisearch": cfg.system_prompt,
    }


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "source": job.source if job.source in ("user", "schedule") else "user",
        "description": job.description,
        "status": job.status,
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "last_seen_at": iso(job.last_seen_at),
        "end_reason": job.end_reason,
        "counts": job.counts,
    }


def queued_job_view(job_id: str, description: str | None) -> dict[str, Any]:
    """A job accepted but not started yet (its row appears when the sync begins)."""
    return {
        "id": job_id,
        "source": "user",
        "description": description,
        "status": "queued",
        "started_at": None,
        "ended_at": None,
        "last_seen_at": None,
        "end_reason": None,
        "counts": {},
    }


def log_view(line: JobLog) -> dict[str, Any]:
    return {
        "id": line.id,
        "created_at": line.created_at.timestamp(),
        "message": line.message,
        "message_type": line.message_type,
    }


def item_view(item: Item, source_id: str) -> dict[str, Any]:
    """`source_id`: what the instance's source is (rag_service.uploads.source_id)."""
    return {
        "id": item.id,
        "key": item.key,
        "namespace": split_key(item.instance_id)[0],
        "status": item.status if item.status in ITEM_STATUSES else "error",
        "error": item.error,
        "checksum": item.etag,
        "file_size": item.size,
        "chunks_count": item.chunks_count,
        # AI Search's item metadata: filename, folder, timestamp (ms) and custom metadata
        "metadata": {
            **{k: v for k, v in item.metadata_.items() if isinstance(v, str | int | float)},
            "filename": item.key.rsplit("/", 1)[-1],
            "folder": folder_of(item.key),
            "timestamp": int(item.last_modified * 1000),
        },
        "created_at": iso(item.created_at),
        "last_seen_at": iso(item.last_seen_at),
        "modified_at": item.last_modified,
        "source_id": source_id,
        "next_action": None,
    }


def item_log_view(line: JobLog, key: str) -> dict[str, Any]:
    """A line of an item's log (AI Search's item logs: camelCase, every field present)."""
    details = line.details or {}
    return {
        "timestamp": iso(line.created_at),
        "action": details.get("action", "info"),
        "message": line.message.removeprefix(f"{key}: "),  # job logs name the item, this not
        "fileKey": key,
        "chunkCount": details.get("chunk_count"),
        "processingTimeMs": details.get("processing_time_ms"),
        "errorType": details.get("error_type"),
    }
