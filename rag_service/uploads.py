"""Where files uploaded through the API (AI Search's built-in storage) live, and the keys they
get; the writing is the instance's UploadStore's (rag_service.providers)."""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.instances import InstanceConfig
from rag_service.models import Instance

UPLOADS = "uploads"
BUILTIN = "builtin"  # AI Search's source_id of uploaded items


def uploads_dir(settings: Settings, instance_id: str) -> Path:
    """The folder of an instance created without a source (AI Search's managed uploads)."""
    return (settings.instance_dir(instance_id) / UPLOADS).resolve()


def managed_source(settings: Settings, instance_id: str) -> str:
    """Where an instance created without a source keeps its uploads: its own area of
    RAGD_UPLOADS_BUCKET (`s3://bucket/prefix/<instance>/`, which every host reaches), else a
    folder in this host's data dir."""
    if settings.uploads_bucket:
        return f"{settings.uploads_bucket.rstrip('/')}/{instance_id}/"
    return str(uploads_dir(settings, instance_id))


def is_managed(settings: Settings, row: Instance) -> bool:
    """Whether the instance reads its own uploads (it was created without a source)."""
    return row.source == managed_source(settings, row.id) or (
        "://" not in row.source and Path(row.source) == uploads_dir(settings, row.id)
    )


def bucket_root(settings: Settings, row: Instance) -> str | None:
    """The key prefix of a managed instance's uploads in RAGD_UPLOADS_BUCKET, or None."""
    if row.source.startswith("s3://") and is_managed(settings, row):
        return urlsplit(row.source).path.lstrip("/")
    return None


def source_id(settings: Settings, row: Instance, cfg: InstanceConfig) -> str:
    """AI Search's `source_id` of the instance's items: `builtin` for uploads, else
    `{type}:{source}`: `r2:<bucket>` for a bucket, `folder:<path>` for a folder."""
    if is_managed(settings, row):
        return BUILTIN
    if row.source.startswith("s3://"):
        return f"r2:{urlsplit(row.source).netloc}"
    return f"r2:{row.source}" if cfg.type in ("r2", "s3") else f"folder:{row.source}"


def unprintable(char: str) -> bool:
    """Control, format (bidi overrides, zero-width) and surrogate characters."""
    return unicodedata.category(char) in ("Cc", "Cf", "Cs")


def safe_key(key: str) -> str:
    """An object key that stays inside its folder: relative, no `..`, no empty parts."""
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if any(unprintable(c) for c in key):
        raise InvalidRequest("invalid item key: control and format characters are not allowed")
    if not key.strip() or key.startswith("/") or any(p.startswith(".") for p in parts):
        raise InvalidRequest(
            f"invalid item key {key!r}: use a relative path like 'docs/guide.md' with no part "
            "starting with '.'"
        )
    if len(key.encode()) > 1024:
        raise InvalidRequest("item keys are limited to 1024 bytes")
    return "/".join(parts)


def upload_key(cfg: InstanceConfig, name: str) -> str:
    """The item key of an uploaded file: its name (checked), under the instance's prefix."""
    key = safe_key(name)
    prefix = cfg.source_params.prefix.lstrip("/")
    return key if key.startswith(prefix) else prefix + key


def refuse_upload(row: Instance) -> InvalidRequest:
    """What an upload into an instance that reads a source of its own is told."""
    return InvalidRequest(
        f"instance {row.name!r} reads {'a bucket' if '://' in row.source else 'a folder'} of "
        "its own: put files there; uploads go to instances created without a source"
    )
