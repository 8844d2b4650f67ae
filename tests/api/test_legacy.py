"""The AutoRAG-shaped routes over real HTTP: shapes, auth, filters, streaming and bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service.api.app import create_app
from rag_service.config import Settings
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import EchoGenerator, HashingEmbedder
from tests.serving import serve

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


@asynccontextmanager
async def served(
    settings: Settings, src: Path, answer_model: str | None = "smollm2", **factories: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API over two synced documents in `src`: kitchen/recipes/bread.md and
    garden.md. `factories`: more Runtime provider factories (generator_factory, ...); answers
    come from the generator factory's model (`answer_model`; None: the default, extractive)."""
    settings.generation_model = answer_model
    settings.sync_cooldown_s = 0  # the sync below has just run: the tests' own may follow it
    (src / "kitchen/recipes").mkdir(parents=True)
    (src / "kitchen/recipes/bread.md").write_text(
        "Knead the bread dough and bake the loaf in a hot oven."
    )
    (src / "garden.md").write_text("Water the tomato plants in the garden every morning.")
    embedder, generator = HashingEmbedder(), EchoGenerator()
    factories = {
        "embedder_factory": lambda model, pooling: embedder,
        "generator_factory": lambda cfg: generator,
        **factories,
    }
    async with Runtime(settings, Providers(settings, **factories)) as rt:
        await rt.instances.ensure_default(str(src))
        assert (await rt.sync("default")).counts["completed"] == 2
    app = create_app(settings, Runtime(settings, Providers(settings, **factories)))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


@pytest.fixture
async def client(settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with served(settings, tmp_path / "src") as http:
        yield http


def assert_error(resp: httpx.Response, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and body["result"] is None
    assert fragment.lower() in body["errors"][0]["message"].lower(), body
    assert isinstance(body["errors"][0]["code"], int)


async def test_health_is_open_everything_else_needs_a_token(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["result"]["status"] == "ok"
    assert_error(await client.post("/search", json={"query": "bread"}), 401, "bearer")
    bad = {"Authorization": "Bearer nope"}
    assert_error(await client.post("/search", json={"query": "x"}, headers=bad), 401, "invalid")
    path = "/accounts/abc/autorag/rags/default/ai-search"
    assert_error(await client.post(path, json={"query": "x"}), 401, "token")


async def test_search_returns_autorag_page(client: httpx.AsyncClient) -> None:
    resp = await client.post("/search", json={"query": "how to bake bread"}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["errors"] == []
    page = body["result"]
    assert page["object"] == "vector_store.search_results.page"
    assert page["search_query"] == "how to bake bread"
    assert page["has_more"] is False and page["next_page"] is None
    first = page["data"][0]
    assert first["filename"] == "kitchen/recipes/bread.md"
    assert first["attributes"]["folder"] == "kitchen/recipes/"
    assert isinstance(first["attributes"]["timestamp"], int)
    assert first["content"][0]["type"] == "text" and "dough" in first["content"][0]["text"]
    assert 0 < first["score"] <= 1


async def test_autorag_path_and_filters(client: httpx.AsyncClient) -> None:
    path = "/accounts/any-account/autorag/rags/default/search"
    only_root = {"type": "eq", "key": "folder", "value": ""}
    resp = await client.post(path, json={"query": "bread", "filters": only_root}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert {d["filename"] for d in resp.json()["result"]["data"]} <= {"garden.md"}
    starts_with = {
        "type": "and",
        "filters": [
            {"type": "gt", "key": "folder", "value": "kitchen//"},
            {"type": "lte", "key": "folder", "value": "kitchen/z"},
        ],
    }
    # AutoRAG's "starts with" idiom: every folder under kitchen/.
    resp = await client.post(path, json={"query": "bread", "filters": starts_with}, headers=AUTH)
    assert {d["filename"] for d in resp.json()["result"]["data"]} == {"kitchen/recipes/bread.md"}
    future_ms = {"type": "gte", "key": "timestamp", "value": "4102444800000"}  # 2100, as a string
    resp = await client.post(path, json={"query": "bread", "filters": future_ms}, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["result"]["data"] == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 400, "query"),
        ({"query": "   "}, 400, "blank"),
        ({"query": "x", "max_num_results": 0}, 400, "max_num_results"),
        ({"query": "x", "max_num_results": 1000}, 400, "max_num_results"),
        ({"query": "x", "filters": {"type": "like", "key": "folder", "value": "a"}}, 400, "like"),
        ({"query": "x", "filters": {"folder": {"$regex": "a"}}}, 400, "$regex"),
        ({"query": "x", "ranking_options": {"score_threshold": 2}}, 400, "score_threshold"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_input_gets_a_4xx_envelope(
    client: httpx.AsyncClient, body: Any, status: int, fragment: str
) -> None:
    assert_error(await client.post("/search", json=body, headers=AUTH), status, fragment)


async def test_malformed_oversized_unknown(client: httpx.AsyncClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    assert_error(await client.post("/search", content=b'{"query": ', headers=headers), 400, "JSON")
    huge = json.dumps({"query": "x" * (2 * 1024 * 1024)})
    resp = await client.post("/search", content=huge, headers=headers)
    assert resp.status_code == 413 and resp.json()["success"] is False
    path = "/accounts/a/autorag/rags/nope/search"
    assert_error(await client.post(path, json={"query": "x"}, headers=AUTH), 404, "nope")
    assert_error(await client.get("/no-such-route", headers=AUTH), 404, "route")


async def test_ai_search_plain_and_streamed(client: httpx.AsyncClient) -> None:
    resp = await client.post("/ai-search", json={"query": "bake bread"}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    page = resp.json()["result"]
    assert page["response"] and page["data"][0]["filename"] == "kitchen/recipes/bread.md"

    events: list[str] = []
    async with client.stream(
        "POST", "/ai-search", json={"query": "bake bread", "stream": True}, headers=AUTH
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e) for e in events[:-1]]  # AutoRAG's stream: the response alone
    assert len(pieces) > 3 and all(set(p) == {"response"} for p in pieces)
