"""S3Source against a real S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config

from rag_service.errors import InvalidRequest, ObjectTooLarge, SourceError
from rag_service.providers import s3_source
from rag_service.providers.folder_source import FolderSource
from rag_service.providers.globs import PathFilter
from rag_service.providers.protocols import ObjectInfo, ObjectSource
from rag_service.providers.s3_source import S3Source, parse_s3_url, read_capped
from tests.s3_server import SECRET_ACCESS_KEY, MotoS3, free_port, moto_s3

MANY = 1205
TREE: dict[str, bytes] = {
    "readme.md": b"# top",
    "notes.txt": b"plain notes",
    "docs/guide.md": b"# guide\n" * 40,
    "docs/api/ref.pdf": b"%PDF-1.4 ref",
    "docs/api/deep/more.md": b"deeper",
    "reports/q1.pdf": b"%PDF-1.4 q1",
    "reports/2024/summary.md": b"summary",
    "big.bin": os.urandom(300 * 1024),  # several 64 KiB chunks
}


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        server.make_bucket("tree", {**TREE, "docs/": b"", "empty/": b""})  # + folder markers
        server.make_bucket("many")
        server.put_direct("many", {f"p/{i:05d}.txt": str(i).encode() for i in range(MANY)})
        yield server


def source(s3: MotoS3, bucket: str = "tree", prefix: str = "", **kw: Any) -> S3Source:
    return S3Source(bucket, prefix, kw.pop("path_filter", None), **s3.source_kwargs(), **kw)


async def listed(src: ObjectSource) -> list[ObjectInfo]:
    return [info async for info in src.list_objects()]


async def keys(src: ObjectSource) -> set[str]:
    return {info.key for info in await listed(src)}


def quick_client(endpoint_url: str, **kw: Any) -> Any:
    """A client that gives up at once (the default one retries with backoff)."""
    cfg = Config(retries={"max_attempts": 1}, connect_timeout=2, s3={"addressing_style": "path"})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", config=cfg, **kw
    )


async def test_parse_s3_url_and_r2_endpoint() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://my.bucket-1/some/prefix/") == ("my.bucket-1", "some/prefix/")
    for bad in ("http://bucket/x", "s3://", "s3:///x", "s3://B", "s3://Upper/x", "s3://b/x?y=1"):
        with pytest.raises(InvalidRequest):
            parse_s3_url(bad)
    r2 = S3Source.for_r2("acc123", "bkt", "p/", access_key_id="k", secret_access_key="s")
    assert r2.client.meta.endpoint_url == "https://acc123.r2.cloudflarestorage.com"
    assert r2.client.meta.region_name == "auto"
    assert (r2.bucket, r2.prefix) == ("bkt", "p/")
    cfg = r2.client.meta.config
    assert cfg.s3["addressing_style"] == "path" and cfg.signature_version == "s3v4"
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 6}  # 1 try + 5 retries
    eu = S3Source.for_r2("acc", "b", access_key_id="k", secret_access_key="s", jurisdiction="eu")
    assert eu.client.meta.endpoint_url == "https://acc.eu.r2.cloudflarestorage.com"
    assert isinstance(r2, ObjectSource)
    broken = S3Source("b", endpoint_url="not a url", access_key_id="k", secret_access_key="s")
    with pytest.raises(SourceError, match="bad S3 settings: Invalid endpoint"):
        await broken.fetch("a.md", 10)


async def test_lists_past_one_page(s3: MotoS3) -> None:
    src = source(s3, "many")
    requests: list[str] = []
    src.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: requests.append(""))
    found = [info.key for info in await listed(src)]
    assert len(requests) == 2  # 1000 + 205
    assert len(found) == MANY and set(found) == {f"p/{i:05d}.txt" for i in range(MANY)}
    listing = cast(
        AsyncGenerator[ObjectInfo, None], source(s3, "many", with_metadata=True).list_objects()
    )
    assert (await anext(listing)).key == "p/00000.txt"
    await listing.aclose()  # a consumer stopping early leaves nothing running


async def test_prefix_globs_and_folder_markers(s3: MotoS3) -> None:
    every = await keys(source(s3))
    assert every == set(TREE)  # "docs/" and "empty/" markers skipped
    docs = {k for k in TREE if k.startswith("docs/")}
    assert await keys(source(s3, prefix="docs/")) == docs
    assert await keys(source(s3, prefix="/docs/")) == docs
    assert await keys(source(s3, prefix="nothing/")) == set()

    def only(*include: str, exclude: tuple[str, ...] = ()) -> S3Source:
        return source(s3, path_filter=PathFilter(include, exclude))

    assert await keys(only("docs/**")) == docs
    assert await keys(only("**/*.pdf")) == {"docs/api/ref.pdf", "reports/q1.pdf"}
    assert await keys(only("*.md")) == {"readme.md"}
    assert await keys(only("**/*.md", exclude=("docs/api/**",))) == {
        "readme.md",
        "docs/guide.md",
        "reports/2024/summary.md",
    }
    assert await keys(source(s3, prefix="reports/", path_filter=PathFilter(("**/*.pdf",)))) == {
        "reports/q1.pdf"
    }


async def test_etag_size_modified_and_overwrite(s3: MotoS3) -> None:
    s3.make_bucket("etags", {"a.md": b"first version"})
    src = source(s3, "etags")
    [info] = await listed(src)
    assert info == ObjectInfo(
        "a.md", hashlib.md5(b"first version").hexdigest(), 13, info.last_modified
    )
    assert abs(info.last_modified - time.time()) < 120 and info.metadata == {}
    s3.put("etags", {"a.md": b"second, longer version"})
    [again] = await listed(src)
    assert again.etag == hashlib.md5(b"second, longer version").hexdigest() != info.etag
    assert again.size == 22


async def test_custom_metadata(s3: MotoS3) -> None:
    meta = {"category": "manual", "version": "2"}
    s3.make_bucket("meta", {"m.pdf": (b"%PDF", meta), "plain.md": b"x", "dir/": b""})
    assert {i.key: i.metadata for i in await listed(source(s3, "meta"))} == {
        "m.pdf": {},
        "plain.md": {},
    }
    with_meta = {i.key: i for i in await listed(source(s3, "meta", with_metadata=True))}
    assert {k: i.metadata for k, i in with_meta.items()} == {"m.pdf": meta, "plain.md": {}}
    assert with_meta["m.pdf"].etag == hashlib.md5(b"%PDF").hexdigest()
    head = await source(s3, "meta").head("m.pdf")
    assert head == with_meta["m.pdf"]

    class Vanishing:
        """The real client, but each object is deleted between the listing and its HEAD."""

        def __init__(self, client: Any) -> None:
            self.client = client

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

        def head_object(self, **kw: Any) -> Any:
            self.client.delete_object(**kw)
            return self.client.head_object(**kw)

    s3.make_bucket("ghosts", {"ghost.md": b"boo"})
    client = Vanishing(source(s3).client)
    ghosts = S3Source("ghosts", endpoint_url=None, access_key_id=None, secret_access_key=None,
                      with_metadata=True, client=client)  # fmt: skip
    assert await listed(ghosts) == []  # skipped, not an error


async def test_fetch_and_size_cap(s3: MotoS3) -> None:
    src = source(s3)
    big = TREE["big.bin"]
    assert await src.fetch("big.bin", len(big)) == big
    assert await src.fetch("docs/guide.md", 10_000) == TREE["docs/guide.md"]
    with pytest.raises(ObjectTooLarge, match=f"larger than the {len(big) - 1} byte limit"):
        await src.fetch("big.bin", len(big) - 1)  # refused on ContentLength


async def test_streamed_cap_without_content_length(s3: MotoS3) -> None:
    closed: list[bool] = []

    class NoLength:
        """The real client, but GetObject answers without a ContentLength."""

        def __init__(self, client: Any) -> None:
            self.client = client

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

        def get_object(self, **kw: Any) -> Any:
            resp = self.client.get_object(**kw)
            del resp["ContentLength"]
            body = resp["Body"]
            close = body.close

            def closing() -> None:
                closed.append(True)
                close()

            body.close = closing
            return resp

    src = S3Source("tree", endpoint_url=None, access_key_id=None, secret_access_key=None,
                   client=NoLength(source(s3).client))  # fmt: skip
    big = TREE["big.bin"]
    assert await src.fetch("big.bin", len(big)) == big
    with pytest.raises(ObjectTooLarge):
        await src.fetch("big.bin", 100 * 1024)
    assert closed == [True, True]
    with pytest.raises(ObjectTooLarge, match="larger than the 5 byte limit"):
        read_capped(io.BytesIO(b"123456"), 5)
    assert read_capped(io.BytesIO(b"12345"), 5) == b"12345"


def assert_clean(
    exc: BaseException, caplog: pytest.LogCaptureFixture, secret: str, key_id: str
) -> None:
    """Neither credential in the message, the repr or a logged traceback (causes included);
    the secret in no log line at all, the key id in none of ours (botocore's DEBUG lines show
    it in the Authorization header, as every AWS SDK does)."""
    traced = "".join(traceback.format_exception(exc))
    for value in (secret, key_id):
        assert value not in str(exc) and value not in repr(exc) and value not in traced
    assert secret not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("rag_service")]
    assert not any(key_id in line for line in ours)
    assert "\n" not in str(exc)


async def test_missing_key_and_bucket(s3: MotoS3, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (SECRET_ACCESS_KEY, s3.access_key_id)
    assert caplog.handler.level == logging.DEBUG  # botocore's DEBUG lines are captured too
    with pytest.raises(SourceError, match=r"^gone\.md vanished before it could be read$") as exc:
        await source(s3).fetch("gone.md", 100)
    assert_clean(exc.value, caplog, *secrets)
    with pytest.raises(SourceError, match=r"gone\.md vanished") as exc:
        await source(s3).head("gone.md")
    assert_clean(exc.value, caplog, *secrets)
    nowhere = source(s3, "no-such-bucket")
    for call in (listed(nowhere), nowhere.fetch("a.md", 100)):  # (a HEAD's 404 has no code)
        with pytest.raises(SourceError, match=r"^bucket 'no-such-bucket' does not exist$") as exc:
            await call
        assert_clean(exc.value, caplog, *secrets)


async def test_unreachable_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}"
    keys = {"aws_access_key_id": "AKIA-KEY-ID", "aws_secret_access_key": SECRET_ACCESS_KEY}
    client = quick_client(url, **keys)
    src = S3Source("tree", endpoint_url=url, access_key_id="AKIA-KEY-ID",
                   secret_access_key=SECRET_ACCESS_KEY, client=client)  # fmt: skip
    for call in (listed(src), src.fetch("a.md", 10), src.head("a.md")):
        with pytest.raises(SourceError, match=f"^cannot reach the S3 endpoint {url}$") as exc:
            await call
        assert_clean(exc.value, caplog, SECRET_ACCESS_KEY, "AKIA-KEY-ID")
    retrying = S3Source("tree", endpoint_url=url, access_key_id="AKIA-KEY-ID",
                        secret_access_key=SECRET_ACCESS_KEY)  # fmt: skip
    with pytest.raises(SourceError, match=r"^cannot reach") as exc:  # after its 5 retries
        await retrying.fetch("a.md", 10)
    assert_clean(exc.value, caplog, SECRET_ACCESS_KEY, "AKIA-KEY-ID")


async def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(s3_source, "_session", boto3.session.Session)  # no cached lookups
    src = S3Source("tree", endpoint_url="http://127.0.0.1:9", access_key_id=None,
                   secret_access_key=None)  # fmt: skip
    with pytest.raises(SourceError, match="no S3 credentials for bucket 'tree'"):
        await src.fetch("a.md", 10)


async def test_access_denied_never_leaks_credentials(
    s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    iam = boto3.client("iam", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="admin", aws_secret_access_key="admin")  # fmt: skip
    iam.create_user(UserName="reader")
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow]}
    iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    kid, real_secret = key["AccessKeyId"], key["SecretAccessKey"]
    caplog.set_level(logging.DEBUG)  # from here on: the setup above logs the new key, rightly

    def with_keys(key_id: str, secret: str) -> S3Source:
        return S3Source("tree", endpoint_url=s3.endpoint_url, access_key_id=key_id,
                        secret_access_key=secret, region="us-east-1")  # fmt: skip

    wrong_secret = "wrong-secret-" + real_secret[:8]
    s3.set_auth(True)
    try:
        assert await with_keys(kid, real_secret).fetch("notes.txt", 100) == b"plain notes"
        for key_id, secret, code in [
            (kid, wrong_secret, "SignatureDoesNotMatch"),
            ("AKIAUNKNOWN0000", SECRET_ACCESS_KEY, "InvalidAccessKeyId"),
        ]:
            src = with_keys(key_id, secret)
            causes = []
            for call in (listed(src), src.fetch("notes.txt", 100), src.head("notes.txt")):
                with pytest.raises(SourceError, match=r"^access denied to bucket 'tree': ") as exc:
                    await call
                assert_clean(exc.value, caplog, secret, key_id)
                assert real_secret not in caplog.text
                causes.append(str(exc.value.__cause__))
            assert code in causes[0] and code in causes[1]  # HEAD errors have no body: "403"
    finally:
        s3.set_auth(False)


async def test_agrees_with_folder_source(s3: MotoS3, tmp_path: Path) -> None:
    for key, body in TREE.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(body)
    for prefix, flt in [("", None), ("docs/", None), ("", PathFilter(("**/*.md",), ("docs/**",)))]:
        folder = FolderSource(tmp_path, prefix, flt)
        bucket = source(s3, prefix=prefix, path_filter=flt)
        from_folder = {(i.key, i.size) for i in await listed(folder)}
        assert from_folder == {(i.key, i.size) for i in await listed(bucket)}
        assert from_folder
        for key, _ in from_folder:
            assert await folder.fetch(key, 1 << 20) == await bucket.fetch(key, 1 << 20)
    for src in (folder, bucket):
        with pytest.raises(SourceError, match=r"^nope\.md vanished before it could be read$"):
            await src.fetch("nope.md", 100)
        with pytest.raises(ObjectTooLarge):
            await src.fetch("big.bin", 1000)


async def test_s3_calls_run_off_the_event_loop(s3: MotoS3) -> None:
    """Every request boto3 sends is sent from a worker thread, never the event loop's: a
    listing or a download never blocks other requests (checked per request, not by timing)."""
    loop_thread = threading.get_ident()
    sent_from: list[int] = []

    def watched(src: S3Source) -> S3Source:
        src.client.meta.events.register(
            "before-send.s3", lambda **kw: sent_from.append(threading.get_ident())
        )
        return src

    found = await listed(watched(source(s3, "many")))
    await asyncio.gather(*(watched(source(s3)).fetch("big.bin", 1 << 20) for _ in range(4)))
    meta = await listed(watched(source(s3, "tree", "docs/", with_metadata=True)))
    assert len(found) == MANY and len(meta) == 3
    assert len(sent_from) >= 4 + 3 + 2  # pages, four downloads, a listing and its HEADs
    assert loop_thread not in sent_from
