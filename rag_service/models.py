"""Metadata tables: instances, items, jobs and job log lines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

ItemStatus = Literal["queued", "running", "completed", "error", "skipped", "outdated"]
ITEM_STATUSES: tuple[ItemStatus, ...] = get_args(ItemStatus)
FINAL_ITEM_STATUSES: tuple[ItemStatus, ...] = ("completed", "error", "skipped")
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
FINAL_JOB_STATUSES: tuple[JobStatus, ...] = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Namespace(Base):
    """A group of instances (AI Search's namespaces); `default` always exists."""

    __tablename__ = "namespaces"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    """`id` is the instance's key in ragd: its name in the `default` namespace, else
    `<namespace>.<name>` (names hold no dots); names are unique within a namespace."""

    __tablename__ = "instances"
    __table_args__ = (Index("uq_instances_namespace_name", "namespace", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(129), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("instance_id", "key", name="uq_items_instance_key"),
        Index("ix_items_instance_status", "instance_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(128), default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    last_modified: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    chunks_count: Mapped[int] = mapped_column(Integer, default=0)
    # Highest chunk count ever written for this item, recorded before writing: a crash can
    # leave at most this many ids, and the next run deletes every one past the new count.
    chunk_high_water: Mapped[int] = mapped_column(Integer, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_instance_started", "instance_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16), default="user")  # user | schedule
    status: Mapped[str] = mapped_column(String(16), default="queued")
    description: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str | None] = mapped_column(Text, default=None)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class JobLog(Base):
    """A line of a job's log; a line about one item names it (AI Search's item logs)."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_item_id", "item_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    message_type: Mapped[int] = mapped_column(Integer, default=0)  # 0 info, 1 warning, 2 error
    message: Mapped[str] = mapped_column(Text)
    item_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # An item event's action, chunk_count, error_type and processing_time_ms.
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class ApiToken(Base):
    """An API token made through the API: its SHA-256 only (the value is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8), default="edit")
    status: Mapped[str] = mapped_column(String(16), default="active")
    issued_on: Mapped[datetime] = mapped_column(default=utcnow)


class CacheEntry(Base):
    """A similarity-cache answer (rag_service.retrieve.cache), shared by every API process."""

    __tablename__ = "answer_cache"
    __table_args__ = (Index("ix_answer_cache_instance_created", "instance_id", "created"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    chunks: Mapped[list[Any]] = mapped_column(JSON)
    digests: Mapped[dict[str, Any]] = mapped_column()
    created: Mapped[float] = mapped_column(Float)


class CacheBucket(Base):
    """An entry's LSH bucket keys (one per band)."""

    __tablename__ = "answer_cache_buckets"

    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry: Mapped[int] = mapped_column(
        ForeignKey("answer_cache.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class CacheItem(Base):
    """The items an entry was grounded on: a change to one drops the entry."""

    __tablename__ = "answer_cache_items"

    item: Mapped[str] = mapped_column(String(36), primary_key=True)
    entry: Mapped[int] = mapped_column(
        ForeignKey("answer_cache.id", ondelete="CASCADE"), primary_key=True, index=True
    )
