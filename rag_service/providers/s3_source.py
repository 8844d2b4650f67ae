"""An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO...) as an object source."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from rag_service.errors import InvalidRequest, ObjectTooLarge, SourceError
from rag_service.providers.globs import PathFilter
from rag_service.providers.protocols import ObjectInfo

CHUNK_BYTES = 64 * 1024
HEAD_CONCURRENCY = 8
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix")`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
        raise InvalidRequest("invalid S3 source URL: expected s3://<bucket>/<optional prefix>")
    return parts.netloc, parts.path.lstrip("/")


def read_capped(body: BinaryIO, max_bytes: int) -> bytes:
    """Read a stream in chunks, refusing as soon as it exceeds `max_bytes`."""
    chunks: list[bytes] = []
    total = 0
    while chunk := body.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise ObjectTooLarge(f"object is larger than the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class S3Source:
    """Lists a bucket under `prefix` (folder markers skipped) and reads objects size-capped."""

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
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.lstrip("/")
        self.path_filter = path_filter or PathFilter()
        self.with_metadata = with_metadata
        self._secrets = [s for s in (secret_access_key, access_key_id) if s]
        self.client: Any = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )

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
    ) -> S3Source:
        """A Cloudflare R2 bucket (`jurisdiction` e.g. "eu" for an EU bucket)."""
        host = f"{account_id}.{jurisdiction}" if jurisdiction else account_id
        return cls(
            bucket,
            prefix,
            path_filter,
            endpoint_url=f"https://{host}.r2.cloudflarestorage.com",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region="auto",
            with_metadata=with_metadata,
        )

    def _error(self, exc: Exception, key: str | None = None) -> SourceError:
        """One line naming the problem and the bucket/key; never a credential."""
        where = f"bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                msg = f"{where} does not exist"
            elif key is not None and (code in _MISSING or status == 404):
                msg = f"{key} vanished before it could be read"
            elif code in _DENIED or status == 403:
                msg = f"access denied to {where}: check the S3 access key and secret"
            else:
                msg = f"S3 error {code or status} on {where}" + (f", key {key!r}" if key else "")
        elif isinstance(exc, BotoConnectionError | HTTPClientError):
            msg = f"cannot reach the S3 endpoint {self.client.meta.endpoint_url}"
        elif isinstance(exc, NoCredentialsError):
            msg = f"no S3 credentials for {where}: set the S3 access key id and secret"
        else:
            msg = f"S3 request on {where} failed: {type(exc).__name__}"
        for secret in self._secrets:
            msg = msg.replace(secret, "***")
        return SourceError(msg)

    def _head(self, key: str, missing_ok: bool = False) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if missing_ok and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None  # deleted since the listing: the next sync sees it gone
            raise self._error(exc, key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, key) from exc
        etag, modified = str(r["ETag"]).strip('"'), r["LastModified"].timestamp()
        return ObjectInfo(key, etag, int(r["ContentLength"]), modified, dict(r["Metadata"]))

    async def head(self, key: str) -> ObjectInfo:
        """The object's listing info plus its custom `x-amz-meta-*` metadata."""
        info = await asyncio.to_thread(self._head, key)
        assert info is not None
        return info

    def _next_page(self, pages: Iterator[dict[str, Any]]) -> list[ObjectInfo] | None:
        try:
            page = next(pages, None)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from exc
        if page is None:
            return None
        return [
            ObjectInfo(
                o["Key"], str(o["ETag"]).strip('"'), o["Size"], o["LastModified"].timestamp()
            )
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/") and self.path_filter.admits(o["Key"])
        ]

    async def list_objects(self) -> AsyncIterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self.prefix))
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(HEAD_CONCURRENCY) if self.with_metadata else None
        try:
            while (infos := await asyncio.to_thread(self._next_page, pages)) is not None:
                if pool is not None:
                    heads = [loop.run_in_executor(pool, self._head, i.key, True) for i in infos]
                    infos = [i for i in await asyncio.gather(*heads) if i is not None]
                for info in infos:
                    yield info
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, key: str, max_bytes: int) -> bytes:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc
        body = r["Body"]
        try:
            if r.get("ContentLength") is not None and r["ContentLength"] > max_bytes:
                raise ObjectTooLarge(f"object is larger than the {max_bytes} byte limit")
            return read_capped(body, max_bytes)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc
        finally:
            body.close()

    async def fetch(self, key: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self._read, key, max_bytes)
