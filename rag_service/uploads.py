"""Files written into an instance's folder through the API (AI Search's uploads), and their
removal when their item is deleted."""

from __future__ import annotations

import asyncio
import os
import unicodedata
from pathlib import Path, PurePosixPath

from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.instances import InstanceConfig
from rag_service.models import Instance

UPLOADS = "uploads"


def uploads_dir(settings: Settings, instance_id: str) -> Path:
    """The folder of an instance created without a source (AI Search's managed uploads)."""
    return (settings.instance_dir(instance_id) / UPLOADS).resolve()


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
    settings: Settings, row: Instance, cfg: InstanceConfig, key: str, data: bytes
) -> str:
    """Write an uploaded file into the instance's managed upload area (never into a folder of
    the user's); returns the item key."""
    folder = uploads_dir(settings, row.id)
    if row.source != str(folder):
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
        tmp = target.with_name(f".{target.name}.upload")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    await asyncio.to_thread(write)
    return key


async def remove_upload(settings: Settings, row: Instance, key: str) -> None:
    """Deleting an item of a managed-uploads instance deletes its file too (else the next sync
    would index it again). Items of other sources stay in their source."""
    uploads = uploads_dir(settings, row.id)
    if Path(row.source) == uploads:
        path = (uploads / safe_key(key)).resolve()
        if path.is_relative_to(uploads):
            await asyncio.to_thread(path.unlink, missing_ok=True)
