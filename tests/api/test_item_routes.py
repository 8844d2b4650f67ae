"""The item routes over real HTTP, on SQLite and PostgreSQL: item logs, the list's params,
uploads with custom metadata (checked, filterable, text kept whole and filtered on its first 64
bytes), source ids and download types; and the same through Cloudflare's SDK, whose models
validate the raw JSON strictly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cloudflare import BadRequestError, Cloudflare
from cloudflare.types.aisearch.namespaces.instances import ItemListResponse, ItemUploadResponse
from cloudflare.types.aisearch.namespaces.instances.item_logs_response import ItemLogsResponseItem
from cloudflare.types.aisearch.namespaces.instances.item_upload_params import File

from rag_service.config import Settings
from rag_service.instances import InstanceConfig
from rag_service.models import Instance
from rag_service.uploads import source_id, uploads_dir
from tests.api.test_legacy import AUTH, assert_error, served
from tests.api.test_sdk import raw_result, strict
from tests.ingest.test_extract_limits import pdf_normal

API = "/accounts/acc/ai-search"
ITEMS = f"{API}/namespaces/default/instances/default/items"
TAGGED = f"{API}/namespaces/default/instances/tagged"
FIELDS = [
    {"field_name": "category", "data_type": "text"},
    {"field_name": "version", "data_type": "number"},
    {"field_name": "public", "data_type": "boolean"},
    {"field_name": "note", "data_type": "text"},
    {"field_name": "released", "data_type": "datetime"},
]
ACCOUNT = "0123456789abcdef"
T = TypeVar("T")


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The default instance over bread.md, garden.md and a PDF that is not one; and `tagged`,
    an uploads instance declaring five custom metadata fields."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.pdf").write_bytes(b"this is not a pdf at all")
    async with served(settings, src) as http:
        body = {"id": "tagged", "custom_metadata": FIELDS}
        resp = await http.post(f"{API}/instances", json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        yield http


async def listed(http: httpx.AsyncClient, url: str, **params: Any) -> list[dict[str, Any]]:
    resp = await http.get(url, params=params, headers=AUTH)
    assert resp.status_code == 200, resp.text
    result: list[dict[str, Any]] = resp.json()["result"]
    return result


async def by_key(http: httpx.AsyncClient, url: str = ITEMS) -> dict[str, dict[str, Any]]:
    return {i["key"]: i for i in await listed(http, url)}


async def upload(
    http: httpx.AsyncClient, name: str, data: bytes, metadata: object = None
) -> httpx.Response:
    form = {"wait_for_completion": "true"}
    if metadata is not None:
        form["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return await http.post(f"{TAGGED}/items", files={"file": (name, data)}, data=form, headers=AUTH)


async def uploaded(http: httpx.AsyncClient, name: str, data: bytes, metadata: object) -> Any:
    resp = await upload(http, name, data, metadata)
    assert resp.status_code == 200, resp.text
    item = resp.json()["result"]
    assert item["status"] == "completed", item
    return item


async def found(http: httpx.AsyncClient, filters: object) -> list[str]:
    """Keys of the chunks of `tagged` a vector search with `filters` returns."""
    retrieval = {"filters": filters, "retrieval_type": "vector", "match_threshold": 0.0}
    body = {"query": "kayak paddle river", "ai_search_options": {"retrieval": retrieval}}
    resp = await http.post(f"{TAGGED}/search", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return sorted({c["item"]["key"] for c in resp.json()["result"]["chunks"]})


async def test_item_logs_say_what_each_sync_did(client: httpx.AsyncClient) -> None:
    items = await by_key(client)
    broken, garden = items["broken.pdf"], items["garden.md"]
    assert broken["status"] == "error" and garden["status"] == "completed"

    logs = (await client.get(f"{ITEMS}/{broken['id']}/logs", headers=AUTH)).json()
    [line] = logs["result"]
    assert line["action"] == "error" and line["fileKey"] == "broken.pdf"
    assert line["message"] == broken["error"] and "not a PDF" in line["message"]
    assert line["errorType"] == "ExtractError" and line["chunkCount"] is None
    assert logs["result_info"] == {"count": 1, "cursor": None, "per_page": 50, "truncated": False}

    logs = (await client.get(f"{ITEMS}/{garden['id']}/logs", headers=AUTH)).json()["result"]
    assert [line["action"] for line in logs] == ["extracted", "chunked", "indexed"]
    assert logs[2]["chunkCount"] == garden["chunks_count"] == 1
    assert logs[2]["message"] == "indexed 1 chunk" and logs[0]["fileKey"] == "garden.md"
    assert all(isinstance(line["processingTimeMs"], int) for line in logs)
    assert all(line["errorType"] is None for line in logs)

    first = (await client.get(f"{ITEMS}/{garden['id']}/logs?limit=2", headers=AUTH)).json()
    info = first["result_info"]
    assert info["truncated"] is True and info["count"] == 2 and info["per_page"] == 2
    rest = await listed(client, f"{ITEMS}/{garden['id']}/logs", cursor=info["cursor"])
    assert first["result"] + rest == logs

    job_logs = await listed(client, f"{API}/instances/default/jobs")
    lines = await listed(client, f"{API}/instances/default/jobs/{job_logs[0]['id']}/logs")
    assert any(line["message"].startswith("broken.pdf: ") for line in lines)

    bad = f"{ITEMS}/{garden['id']}/logs"
    assert_error(await client.get(f"{bad}?limit=101", headers=AUTH), 400, "limit")
    assert_error(await client.get(f"{bad}?cursor=abc", headers=AUTH), 400, "cursor")
    assert_error(await client.get(f"{ITEMS}/nope/logs", headers=AUTH), 404, "item 'nope'")


async def test_item_list_params(client: httpx.AsyncClient, tmp_path: Path) -> None:
    everything = await listed(client, ITEMS)
    assert len(everything) == 3
    folder = f"folder:{(tmp_path / 'src').resolve()}"
    assert {i["source_id"] for i in everything} == {folder}
    assert len(await listed(client, ITEMS, source=folder)) == 3
    assert await listed(client, ITEMS, source="builtin") == []

    resp = await client.get(ITEMS, params={"per_page": 51}, headers=AUTH)
    assert_error(resp, 400, "per_page")
    assert "50" in resp.json()["errors"][0]["message"]
    assert len(await listed(client, ITEMS, per_page=50)) == 3
    two = (await client.get(ITEMS, params={"per_page": 2, "page": 2}, headers=AUTH)).json()
    assert len(two["result"]) == 1 and two["result_info"]["total_count"] == 3

    assert [i["key"] for i in await listed(client, ITEMS, status="error")] == ["broken.pdf"]
    assert [i["key"] for i in await listed(client, ITEMS, search="arden")] == ["garden.md"]
    assert [i["key"] for i in await listed(client, ITEMS, key="garden.md")] == ["garden.md"]
    bread = (await by_key(client))["kitchen/recipes/bread.md"]
    assert [i["key"] for i in await listed(client, ITEMS, item_id=bread["id"])] == [bread["key"]]
    newest = await listed(client, ITEMS, sort_by="modified_at")
    assert [i["metadata"]["timestamp"] for i in newest] == sorted(
        (i["metadata"]["timestamp"] for i in newest), reverse=True
    )
    by_status = await listed(client, ITEMS)
    assert by_status[0]["key"] == "broken.pdf"  # problems before completed items
    recipes = await listed(client, ITEMS, metadata_filter='{"folder": "kitchen/recipes/"}')
    assert [i["key"] for i in recipes] == ["kitchen/recipes/bread.md"]
    assert bread["metadata"]["folder"] == "kitchen/recipes/"
    assert bread["metadata"]["filename"] == "bread.md"
    assert isinstance(bread["metadata"]["timestamp"], int)
    resp = await client.get(ITEMS, params={"source": "x" * 513}, headers=AUTH)
    assert_error(resp, 400, "source")


async def test_uploaded_metadata_is_kept_and_filterable(client: httpx.AsyncClient) -> None:
    guide = await uploaded(
        client,
        "guides/kayak.md",
        b"Paddle the kayak down the river and keep the paddle low.",
        {"Category": "guides", "version": 2, "public": True, "released": "2026-01-15T00:00:00Z"},
    )
    assert guide["source_id"] == "builtin" and guide["key"] == "guides/kayak.md"
    meta = guide["metadata"]
    assert meta["category"] == "guides" and meta["version"] == 2 and meta["public"] is True
    assert meta["filename"] == "kayak.md" and meta["folder"] == "guides/"
    assert isinstance(meta["timestamp"], int) and meta["timestamp"] > 1e12  # milliseconds
    river = {"category": "notes", "version": "3.5", "public": "no"}
    await uploaded(client, "notes/river.md", b"The river was calm; the kayak paddle broke.", river)
    await uploaded(client, "plain.md", b"A kayak without metadata on the river.", None)

    assert await found(client, {"category": "guides"}) == ["guides/kayak.md"]
    assert await found(client, {"version": {"$gte": 3}}) == ["notes/river.md"]
    assert await found(client, {"public": False}) == ["notes/river.md"]
    every = ["guides/kayak.md", "notes/river.md", "plain.md"]
    assert await found(client, {}) == every
    items = f"{TAGGED}/items"
    listed_guides = await listed(client, items, metadata_filter='{"category": "guides"}')
    assert [i["key"] for i in listed_guides] == ["guides/kayak.md"]
    assert {i["source_id"] for i in await listed(client, items, source="builtin")} == {"builtin"}

    # Uploading again replaces the metadata, and no metadata removes it.
    again = await uploaded(client, "guides/kayak.md", b"Paddle the kayak on the river.", None)
    assert "category" not in again["metadata"]
    assert await found(client, {"category": "guides"}) == []


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"folder": "x"}, "'folder' is reserved"),
        ({"category": "a", "Timestamp": 1}, "'Timestamp' is reserved"),
        ({"author": "ann"}, "'author' is not declared"),
        (
            {
                "category": "a",
                "version": 1,
                "public": True,
                "note": "n",
                "released": "2026-01-01",
                "extra": "six",
            },
            "drop 'extra'",
        ),
        ({"version": "many"}, "'version' is number"),
        ({"public": "maybe"}, "'public' is boolean"),
        ({"category": 5}, "'category' is text"),
        ({"released": "last tuesday"}, "'released' is datetime"),
        ({"category": "a", "CATEGORY": "b"}, "twice"),
        (["category"], "JSON object"),
        ("{not json", "metadata"),
    ],
)
async def test_bad_metadata_is_a_400_naming_the_field(
    client: httpx.AsyncClient, metadata: object, fragment: str
) -> None:
    resp = await upload(client, "bad.md", b"The kayak and the river.", metadata)
    assert_error(resp, 400, fragment)
    assert await listed(client, f"{TAGGED}/items") == []  # nothing was written


async def test_long_text_values_are_kept_whole_and_filtered_on_64_bytes(
    client: httpx.AsyncClient,
) -> None:
    long = "é" * 300  # 300 characters, 600 bytes
    item = await uploaded(client, "long.md", b"A kayak on a long river.", {"note": long})
    assert item["metadata"]["note"] == long
    chunks = (await client.get(f"{TAGGED}/items/{item['id']}/chunks", headers=AUTH)).json()
    assert chunks["result"][0]["item"]["metadata"]["note"] == long
    await uploaded(client, "other.md", b"Another kayak on the river.", {"note": "é" * 31 + "x"})

    assert await found(client, {"note": long}) == ["long.md"]
    assert await found(client, {"note": "é" * 32}) == ["long.md"]  # its first 64 bytes
    assert await found(client, {"note": "é" * 32 + "past the first 64 bytes"}) == ["long.md"]
    assert await found(client, {"note": {"$in": ["é" * 40]}}) == ["long.md"]
    assert await found(client, {"note": "é" * 31}) == []
    assert await found(client, {"note": {"$ne": long}}) == ["other.md"]

    over = await uploaded(client, "over.md", b"A kayak again.", {"note": "a" * 600})
    assert over["metadata"]["note"] == "a" * 500  # text is kept up to 500 characters


async def test_download_gives_the_content_type(client: httpx.AsyncClient) -> None:
    files = {
        "a/doc.pdf": (pdf_normal(b"A kayak report"), "application/pdf"),
        "a/doc.md": (b"# Kayak\n\nA kayak.", "text/markdown"),
        "a/doc.txt": (b"A kayak.", "text/plain"),
        "a/doc.html": (b"<p>A kayak.</p>", "text/html"),
        "a/doc.json": (b'{"kayak": "red"}', "application/json"),
    }
    for name, (data, kind) in files.items():
        item = await uploaded(client, name, data, None)
        resp = await client.get(f"{TAGGED}/items/{item['id']}/download", headers=AUTH)
        assert resp.status_code == 200 and resp.content == data
        assert resp.headers["content-type"].split(";")[0] == kind, name
        assert "doc." in resp.headers["content-disposition"]


def test_source_ids_say_what_the_source_is(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    r2, folder = InstanceConfig(type="r2"), InstanceConfig(type="folder")
    managed = Instance(id="up", source=str(uploads_dir(settings, "up")))
    assert source_id(settings, managed, folder) == "builtin"
    assert source_id(settings, Instance(id="b", source="docs-bucket"), r2) == "r2:docs-bucket"
    bucket = Instance(id="s", source="s3://docs-bucket/some/prefix")
    assert source_id(settings, bucket, InstanceConfig()) == "r2:docs-bucket"
    assert source_id(settings, Instance(id="f", source="/srv/docs"), folder) == "folder:/srv/docs"


# --- Cloudflare's SDK -----------------------------------------------------------------------


async def in_thread(call: Callable[[], T]) -> T:
    """The SDK's client blocks: run it beside the server's event loop."""
    return await asyncio.to_thread(call)


async def test_sdk_upload_list_logs(client: httpx.AsyncClient) -> None:
    with Cloudflare(api_token="test-token", base_url=str(client.base_url), max_retries=0) as cf:
        items = cf.aisearch.namespaces.instances.items
        file: File = {
            "file": ("sdk/kayak.md", b"Paddle the kayak down the river."),
            "metadata": json.dumps({"category": "sdk", "version": 1.5}),
            "wait_for_completion": True,
        }
        raw = await in_thread(
            lambda: items.with_raw_response.upload(
                "tagged", account_id=ACCOUNT, name="default", file=file
            )
        )
        up = strict(ItemUploadResponse, raw_result(raw))
        assert up.status == "completed" and up.source_id == "builtin"
        assert up.metadata and up.metadata["category"] == "sdk" and up.metadata["version"] == 1.5

        page = await in_thread(
            lambda: items.list("tagged", account_id=ACCOUNT, name="default", source="builtin")
        )
        assert [i.key for i in page.result] == ["sdk/kayak.md"]
        raw_list = await in_thread(
            lambda: items.with_raw_response.list(
                "tagged", account_id=ACCOUNT, name="default", per_page=50, status="completed"
            )
        )
        for i in raw_result(raw_list):
            strict(ItemListResponse, i)
        with pytest.raises(BadRequestError, match="50"):
            await in_thread(
                lambda: items.list("tagged", account_id=ACCOUNT, name="default", per_page=51)
            )

        logs = await in_thread(
            lambda: items.logs(up.id, account_id=ACCOUNT, name="default", id="tagged")
        )
        assert [line.action for line in logs] == ["extracted", "chunked", "indexed"]
        assert logs[2].chunk_count == up.chunks_count and logs[0].file_key == "sdk/kayak.md"
        raw_logs = await in_thread(
            lambda: items.with_raw_response.logs(
                up.id, account_id=ACCOUNT, name="default", id="tagged", limit=1
            )
        )
        body = json.loads(raw_logs.http_response.text)
        assert body["result_info"]["truncated"] is True and body["result_info"]["cursor"]
        for line in body["result"]:
            strict(ItemLogsResponseItem, line)

        broken = (await by_key(client))["broken.pdf"]
        logs = await in_thread(
            lambda: items.logs(broken["id"], account_id=ACCOUNT, name="default", id="default")
        )
        assert [line.action for line in logs] == ["error"] and logs[0].error_type

        with pytest.raises(BadRequestError, match="'folder' is reserved"):
            await in_thread(
                lambda: items.upload(
                    "tagged",
                    account_id=ACCOUNT,
                    name="default",
                    file={"file": ("x.md", b"x"), "metadata": '{"folder": "a/"}'},
                )
            )
