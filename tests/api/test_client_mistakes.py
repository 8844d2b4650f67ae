"""Every client mistake the audit found answered 500/502 is a 4xx in Cloudflare's envelope,
over real HTTP (one test per finding)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rag_service.config import Settings
from tests.api.test_legacy import AUTH, served

API = "/accounts/acc/ai-search"
INSTANCE = f"{API}/instances/default"
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with served(settings, tmp_path / "src") as http:
        yield http


def assert_4xx(resp: httpx.Response, status: int, *fragments: str) -> None:
    """A 4xx in Cloudflare's envelope whose message holds every fragment."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    assert len(body["errors"]) == 1 and isinstance(body["errors"][0]["code"], int)
    message = body["errors"][0]["message"].lower()
    for fragment in fragments:
        assert fragment.lower() in message, body


async def search_raw(http: httpx.AsyncClient, raw: str, path: str = "search") -> httpx.Response:
    return await http.post(f"{INSTANCE}/{path}", content=raw.encode(), headers=JSON)


def with_filter(filters: str) -> str:
    return '{"query": "bread", "ai_search_options": {"retrieval": {"filters": ' + filters + "}}}"


@pytest.mark.parametrize("value", ["1e999", "-1e999", "1" + "0" * 320])
async def test_non_finite_and_huge_numbers_in_a_filter(
    client: httpx.AsyncClient, value: str
) -> None:
    resp = await search_raw(client, with_filter('{"timestamp": {"$gte": ' + value + "}}"))
    assert_4xx(resp, 400, "timestamp")
    vectorize = '{"type": "eq", "key": "rank", "value": ' + value + "}"
    assert_4xx(await search_raw(client, with_filter(vectorize)), 400, "rank")
    legacy = '{"query": "bread", "filters": {"rank": {"$in": [1, ' + value + "]}}}"
    resp = await client.post("/search", content=legacy.encode(), headers=JSON)
    assert_4xx(resp, 400, "rank")


async def test_a_list_as_a_filter_key(client: httpx.AsyncClient) -> None:
    members = [{"type": "eq", "key": ["folder"], "value": "a"}] * 2
    for f in ({"type": "or", "filters": members}, members[0]):
        body = {"query": "bread", "ai_search_options": {"retrieval": {"filters": f}}}
        resp = await client.post(f"{INSTANCE}/search", json=body, headers=AUTH)
        assert_4xx(resp, 400, "key")


async def test_a_100k_deep_json_body(client: httpx.AsyncClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for raw in (deep, '{"query": "x", "messages": ' + deep + "}"):
        assert_4xx(await search_raw(client, raw), 400, "nested too deeply")
        assert_4xx(await search_raw(client, raw, "chat/completions"), 400, "nested too deeply")
    for path in (f"{API}/instances", "/search", f"{API}/instances/default/jobs"):
        resp = await client.post(path, content=deep.encode(), headers=JSON)
        assert_4xx(resp, 400, "nested too deeply")


def nested_and(levels: int) -> str:
    """An AutoRAG filter of `levels` `and`s around one comparison, as JSON text (json.dumps
    itself gives up long before 900 levels)."""
    inner = '{"type": "eq", "key": "folder", "value": "a"}'
    return '{"type": "and", "filters": [' * levels + inner + "]}" * levels


async def test_a_900_deep_and_filter(client: httpx.AsyncClient) -> None:
    resp = await search_raw(client, with_filter(nested_and(900)))
    assert_4xx(resp, 400, "nested too deeply")
    raw = '{"query": "bread", "filters": ' + nested_and(31) + "}"  # 64 levels of JSON
    resp = await client.post("/search", content=raw.encode(), headers=JSON)
    assert resp.status_code == 200, resp.text
    # The filter's own limit (32 levels), for filters that come in other ways than a body.
    items = f"{INSTANCE}/items"
    resp = await client.get(items, params={"metadata_filter": nested_and(32)}, headers=AUTH)
    assert_4xx(resp, 400, "filter", "nested too deeply")
    resp = await client.get(items, params={"metadata_filter": nested_and(31)}, headers=AUTH)
    assert resp.status_code == 200, resp.text


async def test_a_50k_character_search_on_item_listing(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"{INSTANCE}/items", params={"search": "a" * 50_000}, headers=AUTH)
    assert_4xx(resp, 400, "search")


async def test_a_50k_character_search_on_instance_listing(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"{API}/instances", params={"search": "a" * 50_000}, headers=AUTH)
    assert_4xx(resp, 400, "search")
    assert len(resp.text) < 500  # the message does not repeat the query string


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/instances",
        f"{INSTANCE}/items",
        f"{INSTANCE}/jobs",
        "/accounts/acc/tokens",
    ],
)
@pytest.mark.parametrize("page", [10**18, 10**30, 1_000_001])
async def test_a_huge_page_number(client: httpx.AsyncClient, path: str, page: int) -> None:
    resp = await client.get(path, params={"page": page}, headers=AUTH)
    assert_4xx(resp, 400, "page")


async def test_nul_in_a_filter_field_or_value(client: httpx.AsyncClient) -> None:
    for f in (
        {"fol\u0000der": "a"},
        {"folder": "a\u0000b"},
        {"folder": {"$in": ["a", "b\u0000"]}},
        {"type": "eq", "key": "fol\u0000der", "value": "a"},
        {"type": "eq", "key": "folder", "value": "\u001b[31m"},
    ):
        body = {"query": "bread", "ai_search_options": {"retrieval": {"filters": f}}}
        resp = await client.post(f"{INSTANCE}/search", json=body, headers=AUTH)
        assert_4xx(resp, 400, "control character")
    resp = await client.get(
        f"{INSTANCE}/items", params={"metadata_filter": '{"fol\\u0000der": "a"}'}, headers=AUTH
    )
    assert_4xx(resp, 400, "control character")


async def keyword_search(http: httpx.AsyncClient, instance: str, query: str) -> httpx.Response:
    body = {"query": query, "ai_search_options": {"retrieval": {"retrieval_type": "keyword"}}}
    return await http.post(f"{API}/instances/{instance}/search", json=body, headers=AUTH)


async def test_nul_in_a_trigram_keyword_query(client: httpx.AsyncClient, tmp_path: Path) -> None:
    body = {
        "id": "tri",
        "source": str(tmp_path / "src"),
        "index_method": {"vector": False, "keyword": True},
        "indexing_options": {"keyword_tokenizer": "trigram"},
    }
    resp = await client.post(f"{API}/instances", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    resp = await client.post(f"{API}/instances/tri/jobs", json={}, headers=AUTH)  # index it
    assert resp.status_code == 200, resp.text
    for _ in range(200):
        found = await keyword_search(client, "tri", "bread dough")
        if found.status_code == 200 and found.json()["result"]["chunks"]:
            break
        await asyncio.sleep(0.05)
    for query in ("bre\u0000ad", "\u0000", "dough\u0000\u0001 bread", 'br"ea\u0000d', "\x7f\x9f"):
        resp = await keyword_search(client, "tri", query)
        assert resp.status_code == 200, (query, resp.text)
    # Control characters separate words, as spaces do.
    resp = await keyword_search(client, "tri", "dough\u0000bread")
    assert resp.status_code == 200, resp.text
    keys = [c["item"]["key"] for c in resp.json()["result"]["chunks"]]
    assert keys == ["kitchen/recipes/bread.md"]
    resp = await keyword_search(client, "default", "dough\u0000bread")  # porter's, likewise
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("key", ["../../api-tokens.json", "/etc/passwd", "a/../../b", "a\u0000b"])
async def test_an_item_key_outside_the_source(client: httpx.AsyncClient, key: str) -> None:
    for wait in (True, False):
        resp = await client.put(
            f"{INSTANCE}/items",
            json={"key": key, "next_action": "INDEX", "wait_for_completion": wait},
            headers=AUTH,
        )
        assert_4xx(resp, 400, "key")


# --- Found on the way (beyond the audit's list) -----------------------------------------------


async def test_a_control_character_in_an_instance_source(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    body = {"id": "nul", "source": f"{tmp_path}/src\u0000"}
    resp = await client.post(f"{API}/instances", json=body, headers=AUTH)
    assert_4xx(resp, 400, "source", "control characters")
    resp = await client.put(f"{INSTANCE}", json={"source": "a\u0000"}, headers=AUTH)
    assert_4xx(resp, 400, "source", "control characters")


async def test_a_lone_surrogate_or_nan_in_a_body(client: httpx.AsyncClient) -> None:
    assert_4xx(await search_raw(client, '{"query": "\\ud800"}'), 400, "malformed JSON")
    assert_4xx(await search_raw(client, '{"query": "x", "n": NaN}'), 400, "malformed JSON")


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000])
async def test_a_timestamp_filter_of_odd_digits(client: httpx.AsyncClient, value: str) -> None:
    f = {"timestamp": {"$gte": value}}
    body = {"query": "bread", "ai_search_options": {"retrieval": {"filters": f}}}
    resp = await client.post(f"{INSTANCE}/search", json=body, headers=AUTH)
    assert resp.status_code in (200, 400), resp.text


async def test_a_deep_metadata_filter_on_item_listing(client: httpx.AsyncClient) -> None:
    deep = "[" * 1000 + "]" * 1000  # within the 2048 characters a metadata_filter may have
    resp = await client.get(f"{INSTANCE}/items", params={"metadata_filter": deep}, headers=AUTH)
    assert_4xx(resp, 400, "nested too deeply")
    longer = "[" * 5000 + "]" * 5000
    resp = await client.get(f"{INSTANCE}/items", params={"metadata_filter": longer}, headers=AUTH)
    assert_4xx(resp, 400, "2048")
