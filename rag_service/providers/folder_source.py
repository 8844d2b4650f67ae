"""A local folder as an object source: keys are POSIX paths relative to the root."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from rag_service.errors import InvalidRequest, ObjectTooLarge, SourceError
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


class FolderSource:
    """Lists files under `root` (hidden files and folders skipped) and reads them size-capped.
    Within the root it can also write (`put`, `remove`, `clear`): a managed instance's uploads."""

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

    def _inside(self, key: str) -> Path:
        path = self.root / key
        if not path.parent.resolve().is_relative_to(self.root):
            raise InvalidRequest(f"invalid item key {key!r}: it leads out of the upload area")
        return path

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        target = self._inside(key)
        write_metadata(target, metadata)
        tmp = target.with_name(f".{target.name}.upload")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Write one file (atomically: a sync never reads half of it), its metadata beside it."""
        await asyncio.to_thread(self._put, key, data, metadata)

    def _remove(self, key: str) -> None:
        path = self._inside(key)
        path.unlink(missing_ok=True)
        metadata_path(path).unlink(missing_ok=True)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self._remove, key)

    async def clear(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root, ignore_errors=True)
