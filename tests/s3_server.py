"""A real S3 endpoint for tests: moto's server on a free local port (no pytest needed).

with moto_s3() as s3:
    s3.make_bucket("docs", {"a.md": b"# A", "b.pdf": (b"%PDF", {"category": "manual"})})
    source = S3Source("docs", **s3.source_kwargs())

moto keeps its state per process, shared by every server it runs: use distinct bucket names
per test; leaving `moto_s3` resets that state (and turns credential checks back off).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY_ID = "testing-key-id"
SECRET_ACCESS_KEY = "testing-secret-do-not-leak"
REGION = "us-east-1"

# A file's content alone, or its content and its `x-amz-meta-*` metadata.
ObjectSpec = bytes | tuple[bytes, Mapping[str, str]]


@dataclass
class MotoS3:
    """A running moto S3 server: its endpoint, the credentials to use, and upload helpers."""

    endpoint_url: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION

    def source_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `S3Source` needs to reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
        }

    def client(self) -> Any:
        """A plain boto3 S3 client on this server (path-style addressing)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
        )

    def put(self, bucket: str, objects: Mapping[str, ObjectSpec], threads: int = 16) -> None:
        """Upload `{key: bytes | (bytes, metadata)}` (in parallel; overwrites existing keys)."""
        client = self.client()

        def upload(item: tuple[str, ObjectSpec]) -> None:
            key, spec = item
            body, meta = (spec, {}) if isinstance(spec, bytes) else spec
            client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=dict(meta))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(upload, objects.items()))

    def put_direct(self, bucket: str, objects: Mapping[str, bytes]) -> None:
        """Bulk-load objects straight into moto's in-process backend (~100x faster than HTTP).

        For large fixtures only: the server runs in this process, so it serves them at once.
        """
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, body in objects.items():
            backend.put_object(bucket, key, body)

    def make_bucket(self, bucket: str, objects: Mapping[str, ObjectSpec] | None = None) -> None:
        """Create `bucket` (if new) and upload `objects` into it."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        if objects:
            self.put(bucket, objects)

    def delete(self, bucket: str, *keys: str) -> None:
        """Delete objects (to test a sync noticing removals)."""
        client = self.client()
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)

    def reset(self) -> None:
        """Forget every bucket (moto's state is process-wide, shared by all its servers)."""
        self._post("/moto-api/reset", b"")

    def set_auth(self, enforced: bool) -> None:
        """Make moto check credentials (unknown keys get InvalidAccessKeyId) or accept any.

        Process-wide in moto: turn it back off when done.
        """
        self._post("/moto-api/reset-auth", b"0" if enforced else b"inf")

    def _post(self, path: str, body: bytes) -> None:
        headers = {"Content-Type": "text/plain"}  # a form type would hide the body from moto
        req = urllib.request.Request(self.endpoint_url + path, body, headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def free_port() -> int:
    """A local TCP port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """Run moto's S3 server on 127.0.0.1 (a free port) for the `with` block."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server.start()
    host, port = server.get_host_and_port()
    s3 = MotoS3(f"http://{host}:{port}")
    try:
        yield s3
    finally:
        try:
            s3.set_auth(False)
            s3.reset()
        finally:
            server.stop()
