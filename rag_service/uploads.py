"""Files written into an instance's folder through the API (AI Search's uploads), with their
custom metadata, and their removal when their item is deleted."""

from __future__ import annotations

import asyncio
import json
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.instances import InstanceConfig
from rag_service.models import Instance
from rag_service.providers.folder_source import metadata_path

UPLOADS = "uploads"
BUILTIN = "builtin"  # AI Search's source_id of uploaded items


def uploads_dir(settings: Settings, instance_id: str) -> Path:
    """The folder of an instance created without a source (AI Search's managed uploads)."""
    return (settings.instance_dir(instance_id) / UPLOADS).resolve()


def is_managed(settings: Settings, row: Instance) -> bool:
    """Whether the instance reads its own uploads folder (it was created without a source)."""
    return Path(row.source) == uploads_dir(settings, row.id)


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


async def save_upload(
    settings: Settings,
    row: Instance,
    cfg: InstanceConfig,
    key: str,
    data: bytes,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write an uploaded file into the instance's managed upload area (never into a folder of
    the user's), its custom metadata (checked by the caller) beside it; returns the item key."""
    folder = uploads_dir(settings, row.id)
    if not is_managed(settings, row):
        raise InvalidRequest(
            f"instance {row.id!r} reads {'a bucket' if '://' in row.source else 'a folder'} of "
            "its own: put files there; uploads go to instances created without a source"
        )
    key = safe_key(key)
    prefix = cfg.source_params.prefix.lstrip("/")
    key = key if key.startswith(prefix) else prefix + key
    target = folder / key

    def write() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(folder):
            raise InvalidRequest(f"invalid item key {key!r}: it leads out of the upload area")
        write_metadata(target, metadata or {})
        tmp = target.with_name(f".{target.name}.upload")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    await asyncio.to_thread(write)
    return key


def write_metadata(target: Path, metadata: Mapping[str, str]) -> None:
    """Keep a file's custom metadata beside it (before the file itself is replaced, so that a
    sync that sees the new file sees its metadata); none: no metadata file."""
    path = metadata_path(target)
    if not metadata:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{path.name}.upload")
    tmp.write_text(json.dumps(dict(metadata)), "utf-8")
    os.replace(tmp, path)


async def remove_upload(settings: Settings, row: Instance, key: str) -> None:
    """Deleting an item of a managed-uploads instance deletes its file and metadata too (else
    the next sync would index it again). Items of other sources stay in their source."""
    uploads = uploads_dir(settings, row.id)
    if is_managed(settings, row):
        path = (uploads / safe_key(key)).resolve()
        if path.is_relative_to(uploads):
            await asyncio.to_thread(path.unlink, missing_ok=True)
            await asyncio.to_thread(metadata_path(path).unlink, missing_ok=True)
