"""Uploads into RAGD_UPLOADS_BUCKET (moto's S3 server over HTTP): an instance created without a
source keeps its files, and their custom metadata as `x-amz-meta-*`, in its own area of the
bucket, where every host reaches them; deleting an item or the instance deletes them there."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from rag_service.config import Settings
from tests.api.test_item_routes import FIELDS, found
from tests.api.test_legacy import AUTH, served
from tests.s3_server import MotoS3, moto_s3

API = "/accounts/acc/ai-search"
BUCKET = "ragd-uploads"
TAGGED = f"{API}/namespaces/default/instances/tagged"


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture
async def client(
    settings: Settings, tmp_path: Path, s3: MotoS3
) -> AsyncIterator[httpx.AsyncClient]:
    s3.reset()
    s3.make_bucket(BUCKET)
    settings.uploads_bucket = f"s3://{BUCKET}/managed"
    settings.s3_endpoint_url = s3.endpoint_url
    settings.s3_access_key_id = s3.access_key_id
    settings.s3_secret_access_key = SecretStr(s3.secret_access_key)
    settings.s3_region = s3.region
    async with served(settings, tmp_path / "src") as http:
        body = {"id": "tagged", "custom_metadata": FIELDS}
        resp = await http.post(f"{API}/instances", json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        yield http


def stored(s3: MotoS3) -> dict[str, dict[str, str]]:
    """The bucket's objects and their metadata."""
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {k: client.head_object(Bucket=BUCKET, Key=k)["Metadata"] for k in keys}


async def upload(http: httpx.AsyncClient, url: str, name: str, data: bytes, meta: Any) -> Any:
    form = {"wait_for_completion": "true", "metadata": json.dumps(meta)}
    resp = await http.post(f"{url}/items", files={"file": (name, data)}, data=form, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()["result"]


async def test_uploads_live_in_the_bucket(client: httpx.AsyncClient, s3: MotoS3) -> None:
    note = "Café für Kajakfahrer"  # not ASCII: S3 metadata carries it RFC 2047-encoded
    item = await upload(client, TAGGED, "guides/kayak.md", b"Paddle the kayak down the river.",
                        {"category": "guides", "note": note})  # fmt: skip
    assert item["status"] == "completed" and item["key"] == "guides/kayak.md", item
    assert item["source_id"] == "builtin"
    assert item["metadata"]["note"] == note and item["metadata"]["category"] == "guides"
    objects = stored(s3)
    assert list(objects) == ["managed/tagged/guides/kayak.md"]
    assert objects["managed/tagged/guides/kayak.md"]["category"] == "guides"
    assert await found(client, {"note": note}) == ["guides/kayak.md"]

    instance = (await client.get(TAGGED, headers=AUTH)).json()["result"]
    assert instance["source"] == f"s3://{BUCKET}/managed/tagged/" and instance["type"] == "r2"
    download = await client.get(f"{TAGGED}/items/{item['id']}/download", headers=AUTH)
    assert download.content == b"Paddle the kayak down the river."

    # A sync finds what the bucket holds, and nothing else (the root is the instance's area).
    s3.put(BUCKET, {"managed/other/x.md": b"not this instance's", "managed/tagged2/y.md": b"no"})
    synced = await client.post(f"{TAGGED}/jobs", headers=AUTH)
    assert synced.status_code == 200, synced.text
    keys = [i["key"] for i in (await client.get(f"{TAGGED}/items", headers=AUTH)).json()["result"]]
    assert keys == ["guides/kayak.md"]

    deleted = await client.delete(f"{TAGGED}/items/{item['id']}", headers=AUTH)
    assert deleted.status_code == 200, deleted.text
    assert "managed/tagged/guides/kayak.md" not in stored(s3)


async def test_namespaced_instance_and_its_deletion(client: httpx.AsyncClient, s3: MotoS3) -> None:
    created = await client.post(f"{API}/namespaces", json={"name": "shop"}, headers=AUTH)
    assert created.status_code == 200, created.text
    docs = f"{API}/namespaces/shop/instances"
    assert (await client.post(docs, json={"id": "docs"}, headers=AUTH)).status_code == 200
    await upload(client, f"{docs}/docs", "a.md", b"Boots dry by the stove.", {})
    await upload(client, f"{docs}/docs", "b/c.md", b"Wax the boots twice a year.", {})
    assert sorted(stored(s3)) == ["managed/shop.docs/a.md", "managed/shop.docs/b/c.md"]
    gone = await client.delete(f"{docs}/docs", headers=AUTH)
    assert gone.status_code == 200, gone.text
    assert stored(s3) == {}


def test_the_setting_takes_a_bucket_url() -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Settings(uploads_bucket="/srv/uploads")
