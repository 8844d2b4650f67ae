"""An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO...) as an object source."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from email.header import decode_header, make_header
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from rag_service.errors import InvalidRequest, ObjectTooLarge, SourceError
from rag_service.providers.globs import PathFilter
from rag_service.providers.protocols import ObjectInfo

CHUNK_BYTES = 64 * 1024
HEAD_CONCURRENCY = 8
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
_CONFIG = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                 s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=60)  # fmt: skip
_LOCK = threading.Lock()  # botocore sessions are not thread-safe


@functools.cache
def _session() -> Any:
    """One session for all clients: it caches the parsed service models (~0.1 s each)."""
    return boto3.session.Session()


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix")`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
        raise InvalidRequest("invalid S3 source URL: expected s3://<bucket>/<optional prefix>")
    return parts.netloc, parts.path.lstrip("/")


def _status(exc: Exception) -> int | None:
    meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc, ClientError) else {}
    return cast("int | None", meta.get("HTTPStatusCode"))


def read_capped(body: BinaryIO, max_bytes: int) -> bytes:
    """Read a stream in chunks, refusing as soon as it exceeds `max_bytes`."""
    data = bytearray()
    while chunk := body.read(CHUNK_BYTES):
        data += chunk
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"object is larger than the {max_bytes} byte limit")
    return bytes(data)


def encode_metadata(value: str) -> str:
    """An `x-amz-meta-*` value: as it is when ASCII, else an RFC 2047 encoded word (HTTP
    headers are ASCII; S3 itself returns non-ASCII metadata so)."""
    if value.isascii() and value.isprintable():
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def decode_metadata(value: str) -> str:
    """A metadata value as written: RFC 2047 encoded words decoded, other text kept."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


class S3Source:
    """Lists a bucket under `prefix` (folder markers skipped) and reads objects size-capped.

    `root` is a key prefix of the bucket that the source's item keys are relative to (a managed
    instance's area of the uploads bucket); `prefix` then narrows the listing inside it. Within
    the root the source can also write (`put`, `remove`, `clear`): an instance's uploads."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        path_filter: PathFilter | None = None,
        *,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str = "auto",
        with_metadata: bool = False,
        client: Any | None = None,
        root: str = "",
    ) -> None:
        self.bucket = bucket
        self.root = root.lstrip("/")
        self.prefix = prefix.lstrip("/")
        self.path_filter = path_filter or PathFilter()
        self.with_metadata = with_metadata
        self._secrets = [s for s in (secret_access_key, access_key_id) if s]
        self._client = client
        self._client_args = dict(endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)  # fmt: skip

    @property
    def client(self) -> Any:
        """The boto3 client, built on first use (the first takes ~0.15 s: not on the loop)."""
        with _LOCK:
            if self._client is None:
                try:
                    self._client = _session().client("s3", config=_CONFIG, **self._client_args)
                except ValueError as exc:  # a malformed endpoint URL or region
                    raise SourceError(self._scrub(f"bad S3 settings: {exc}")) from None
            return self._client

    @classmethod
    def for_r2(
        cls,
        account_id: str,
        bucket: str,
        prefix: str = "",
        path_filter: PathFilter | None = None,
        *,
        access_key_id: str | None,
        secret_access_key: str | None,
        jurisdiction: str | None = None,
        with_metadata: bool = False,
        root: str = "",
    ) -> S3Source:
        """A Cloudflare R2 bucket (`jurisdiction` e.g. "eu" for an EU bucket)."""
        host = f"{account_id}.{jurisdiction}" if jurisdiction else account_id
        endpoint_url = f"https://{host}.r2.cloudflarestorage.com"
        keys = {"access_key_id": access_key_id, "secret_access_key": secret_access_key}
        return cls(bucket, prefix, path_filter, endpoint_url=endpoint_url, **keys,
                   region="auto", with_metadata=with_metadata, root=root)  # fmt: skip

    def _error(self, exc: Exception, key: str | None = None) -> SourceError:
        """One line naming the problem and the bucket/key; never a credential."""
        where = f"bucket {self.bucket!r}"
        transient = False
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = _status(exc)
            if code == "NoSuchBucket":
                msg = f"{where} does not exist"
            elif key is not None and (code == "NoSuchKey" or status == 404):
                msg = f"{key} vanished before it could be read"
            elif code in _DENIED or status == 403:
                msg = f"access denied to {where}: check the S3 access key and secret"
            else:
                msg = f"S3 error {code or status} on {where}" + (f", key {key!r}" if key else "")
                transient = code in _THROTTLED or (status or 0) >= 500
        elif isinstance(exc, BotoConnectionError | HTTPClientError):
            msg = f"cannot reach the S3 endpoint {self.client.meta.endpoint_url}"
            transient = True
        elif isinstance(exc, NoCredentialsError):
            msg = f"no S3 credentials for {where}: set the S3 access key id and secret"
        else:
            msg = f"S3 request on {where} failed: {type(exc).__name__}"
        return SourceError(self._scrub(msg), transient=transient)

    def _scrub(self, msg: str) -> str:
        for secret in self._secrets:  # real keys are 20+ characters; short ones are test values
            msg = msg.replace(secret, "***") if len(secret) >= 8 else msg
        return msg

    def _head(self, key: str, missing_ok: bool = False) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self.root + key)
        except (ClientError, BotoCoreError) as exc:
            if missing_ok and _status(exc) == 404:
                return None  # deleted since the listing: the next sync sees it gone
            raise self._error(exc, key) from exc
        etag, modified = r["ETag"].strip('"'), r["LastModified"].timestamp()
        metadata = {k: decode_metadata(v) for k, v in r["Metadata"].items()}
        return ObjectInfo(key, etag, int(r["ContentLength"]), modified, metadata)

    async def head(self, key: str) -> ObjectInfo:
        """The object's listing info plus its custom `x-amz-meta-*` metadata."""
        return cast(ObjectInfo, await asyncio.to_thread(self._head, key))

    async def stat(self, key: str) -> ObjectInfo | None:
        if not key.startswith(self.prefix) or key.endswith("/") or not self.path_filter.admits(key):
            return None
        return await asyncio.to_thread(self._head, key, True)

    def _pages(self) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        return iter(paginator.paginate(Bucket=self.bucket, Prefix=self.root + self.prefix))

    def _next_page(self, pages: Iterator[dict[str, Any]]) -> list[ObjectInfo] | None:
        try:
            page = next(pages, None)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from exc
        if page is None:
            return None
        cut = len(self.root)
        return [
            ObjectInfo(key, o["ETag"].strip('"'), o["Size"], o["LastModified"].timestamp())
            for o in page.get("Contents", [])
            for key in [o["Key"][cut:]]
            if key and not key.endswith("/") and self.path_filter.admits(key)
        ]

    async def list_objects(self) -> AsyncIterator[ObjectInfo]:
        pages = await asyncio.to_thread(self._pages)
        while (infos := await asyncio.to_thread(self._next_page, pages)) is not None:
            for start in range(0, len(infos), HEAD_CONCURRENCY):
                batch = infos[start : start + HEAD_CONCURRENCY]
                for info in await self._heads(batch) if self.with_metadata else batch:
                    yield info

    async def _heads(self, infos: list[ObjectInfo]) -> list[ObjectInfo]:
        """The infos HEADed (in parallel) for their metadata; objects deleted since are left out."""
        heads = await asyncio.gather(*(asyncio.to_thread(self._head, i.key, True) for i in infos))
        return [info for info in heads if info is not None]

    def _read(self, key: str, max_bytes: int) -> bytes:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.root + key)
            with contextlib.closing(r["Body"]) as body:  # closed early: the rest is never read
                if (r.get("ContentLength") or 0) > max_bytes:
                    raise ObjectTooLarge(f"object is larger than the {max_bytes} byte limit")
                return read_capped(body, max_bytes)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    async def fetch(self, key: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self._read, key, max_bytes)

    def _put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        meta = {k.lower(): encode_metadata(v) for k, v in metadata.items()}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.root + key, Body=data,
                                   Metadata=meta)  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Write one object under the root, its custom metadata as `x-amz-meta-*`."""
        await asyncio.to_thread(self._put, key, data, metadata)

    def _delete(self, object_keys: list[str]) -> None:
        if object_keys:  # DeleteObjects takes up to 1,000 keys, as a listing page holds
            objects = [{"Key": k} for k in object_keys]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    async def remove(self, key: str) -> None:
        """Delete one object under the root (nothing when it is already gone)."""
        try:
            await asyncio.to_thread(self._delete, [self.root + key])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    def _clear(self) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.root):
            self._delete([o["Key"] for o in page.get("Contents", [])])

    async def clear(self) -> None:
        """Delete every object under the root (a deleted managed instance's uploads)."""
        if not self.root:
            raise SourceError("refusing to empty a whole bucket: the source has no root")
        try:
            await asyncio.to_thread(self._clear)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from exc
