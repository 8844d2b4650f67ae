"""A local folder as an object source: keys are POSIX paths relative to the root."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from rag_service.errors import ObjectTooLarge, SourceError
from rag_service.providers.globs import PathFilter
from rag_service.providers.protocols import ObjectInfo


def metadata_path(path: Path) -> Path:
    """Where a file's custom metadata is kept (a hidden file, so never listed itself): the
    folder's counterpart of S3 object metadata, written for uploads with `metadata`."""
    return path.with_name(f".{path.name}.metadata.json")


def read_metadata(path: Path) -> dict[str, str]:
    """The file's custom metadata (a JSON object of strings), or none."""
    try:
        found = json.loads(metadata_path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


class FolderSource:
    """Lists files under `root` (hidden files and folders skipped) and reads them size-capped."""

    def __init__(self, root: Path, prefix: str = "", path_filter: PathFilter | None = None) -> None:
        self.root = root.resolve()
        self.prefix = prefix.lstrip("/")
        self.path_filter = path_filter or PathFilter()

    def _scan(self) -> list[ObjectInfo]:
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a folder")
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and (info := self._info(Path(dirpath, name))):
                    found.append(info)
        return found

    def _info(self, path: Path) -> ObjectInfo | None:
        """The file's info, or None when it is not admitted, not a file, or gone."""
        key = path.relative_to(self.root).as_posix()
        hidden = any(part.startswith(".") for part in key.split("/"))
        if hidden or not key.startswith(self.prefix) or not self.path_filter.admits(key):
            return None
        try:
            st = path.stat()
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None  # vanished between walk and stat, or a symlink loop
        if not path.is_file() or not real.is_relative_to(self.root):
            return None  # a symlink out of the folder is not the folder's
        # A cheap change signature, as S3's ETag is: size and mtime in nanoseconds.
        etag = hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        return ObjectInfo(key, etag, st.st_size, st.st_mtime, read_metadata(path))

    async def stat(self, key: str) -> ObjectInfo | None:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise SourceError(f"key {key!r} escapes the source folder")
        return await asyncio.to_thread(self._info, path)

    async def list_objects(self) -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._scan):
            yield info

    def _read(self, key: str, max_bytes: int) -> bytes:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise SourceError(f"key {key!r} escapes the source folder")
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError as exc:
            raise SourceError(f"{key} vanished before it could be read") from exc
        except OSError as exc:
            raise SourceError(f"cannot read {key}: {exc.strerror}") from exc
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"file is larger than the {max_bytes} byte limit")
        return data

    async def fetch(self, key: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self._read, key, max_bytes)
