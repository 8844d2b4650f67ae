"""The AI Search routes over real HTTP with test models: options, bad input, auth everywhere,
tokens, uploads, jobs, health, metrics and schema."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service import records
from rag_service.config import Settings
from rag_service.providers.protocols import ObjectInfo
from rag_service.runtime import Runtime
from tests.api.test_legacy import AUTH, assert_error, client, database_url  # noqa: F401

API = "/accounts/acc/ai-search"
INSTANCE = f"{API}/instances/default"
OPEN = {"/healthz", "/readyz", "/metrics"}


async def search(http: httpx.AsyncClient, body: dict[str, Any], status: int = 200) -> Any:
    resp = await http.post(f"{INSTANCE}/search", json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    return resp.json()


def keys(result: dict[str, Any]) -> list[str]:
    return [c["item"]["key"] for c in result["result"]["chunks"]]


async def test_every_route_but_health_and_metrics_needs_a_token(client: httpx.AsyncClient) -> None:  # noqa: F811
    schema = (await client.get("/schema", headers=AUTH)).json()
    assert_error(await client.get("/schema"), 401, "bearer")
    checked = 0
    for path, operations in schema["paths"].items():
        url = re.sub(r"\{[^}]+\}", "default", path)
        for method in operations:
            resp = await client.request(method.upper(), url, json={"query": "x"})
            if path in OPEN:
                assert resp.status_code in (200, 503), (path, resp.text)
                continue
            assert_error(resp, 401, "bearer")
            bad = await client.request(
                method.upper(), url, headers={"Authorization": "Bearer wrong"}
            )
            assert_error(bad, 401, "invalid")
            checked += 1
    assert checked >= 30  # instances, search, chat, stats, jobs, items, tokens, legacy


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("search", {}, "'query' or 'messages' is required"),
        ("search", {"query": "a", "messages": [{"role": "user", "content": "a"}]}, "not both"),
        ("search", {"query": "   "}, "blank"),
        ("search", {"messages": [{"role": "system", "content": "a"}]}, "role 'user'"),
        (
            "search",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "only text",
        ),
        (
            "search",
            {"query": "a", "ai_search_options": {"retrieval": {"max_num_results": 0}}},
            "max_num_results",
        ),
        (
            "search",
            {"query": "a", "ai_search_options": {"retrieval": {"max_num_results": 1000}}},
            "max_num_results",
        ),
        (
            "search",
            {"query": "a", "ai_search_options": {"retrieval": {"retrieval_type": "fuzzy"}}},
            "retrieval_type",
        ),
        (
            "search",
            {"query": "a", "ai_search_options": {"retrieval": {"match_threshold": 2}}},
            "match_threshold",
        ),
        (
            "search",
            {
                "query": "a",
                "ai_search_options": {
                    "retrieval": {"filters": {"type": "like", "key": "folder", "value": "a"}}
                },
            },
            "unknown filter type 'like'",
        ),
        (
            "search",
            {
                "query": "a",
                "ai_search_options": {"retrieval": {"filters": {"folder": {"$regex": "a"}}}},
            },
            "unknown filter operator '$regex'",
        ),
        (
            "search",
            {"query": "a", "ai_search_options": {"retrieval": {"boost_by": [{"field": "author"}]}}},
            "boost_by field 'author'",
        ),
        ("chat/completions", {"query": "a"}, "messages"),
        ("chat/completions", {"messages": []}, "messages"),
        ("chat/completions", {"messages": [{"role": "robot", "content": "a"}]}, "role"),
    ],
)
async def test_bad_input_is_a_4xx_that_says_what_to_fix(
    client: httpx.AsyncClient,  # noqa: F811
    path: str,
    body: dict[str, Any],
    fragment: str,
) -> None:
    resp = await client.post(f"{INSTANCE}/{path}", json=body, headers=AUTH)
    assert_error(resp, 400, fragment)


async def test_malformed_unknown_oversized(client: httpx.AsyncClient) -> None:  # noqa: F811
    headers = {**AUTH, "Content-Type": "application/json"}
    for path in ("search", "chat/completions"):
        resp = await client.post(f"{INSTANCE}/{path}", content=b'{"query": ', headers=headers)
        assert_error(resp, 400, "malformed JSON")
    resp = await client.post(f"{API}/instances/nope/search", json={"query": "x"}, headers=AUTH)
    assert_error(resp, 404, "instance 'nope' not found")
    huge = json.dumps({"query": "x" * (2 * 1024 * 1024)})
    resp = await client.post(f"{INSTANCE}/search", content=huge, headers=headers)
    assert resp.status_code == 413 and resp.json()["success"] is False
    resp = await client.get(f"{API}/namespaces/other/instances/default", headers=AUTH)
    assert_error(resp, 404, "namespace 'other'")
    resp = await client.get(f"{API}/instances?per_page=1000", headers=AUTH)
    assert_error(resp, 400, "per_page")
    resp = await client.post(f"{API}/instances", json={"id": "Bad Id!"}, headers=AUTH)
    assert_error(resp, 400, "instance id")
    resp = await client.post(f"{API}/instances", json={"id": "x", "chunk_size": 5}, headers=AUTH)
    assert_error(resp, 400, "chunk_size")
    resp = await client.post(f"{API}/instances", json={"id": "default"}, headers=AUTH)
    assert_error(resp, 409, "already exists")


async def test_retrieval_options_change_the_results(client: httpx.AsyncClient) -> None:  # noqa: F811
    def opts(**retrieval: Any) -> dict[str, Any]:
        return {"query": "bake the bread", "ai_search_options": {"retrieval": retrieval}}

    hybrid = await search(client, opts())
    assert keys(hybrid)[0] == "kitchen/recipes/bread.md"
    assert hybrid["result"]["chunks"][0]["scoring_details"]["fusion_method"] == "max"
    keyword = await search(client, opts(retrieval_type="keyword"))
    details = keyword["result"]["chunks"][0]["scoring_details"]
    assert "vector_score" not in details and details["keyword_rank"] == 1
    vector = await search(client, opts(retrieval_type="vector", match_threshold=0.0))
    assert all("keyword_score" not in c["scoring_details"] for c in vector["result"]["chunks"])
    assert len(vector["result"]["chunks"]) == 2
    one = await search(
        client, opts(retrieval_type="vector", match_threshold=0.0, max_num_results=1)
    )
    assert len(one["result"]["chunks"]) == 1
    fused = await search(client, opts(fusion_method="max"))
    assert fused["result"]["chunks"][0]["scoring_details"]["fusion_method"] == "max"
    strict = await search(client, opts(retrieval_type="keyword", keyword_match_mode="and"))
    assert keys(strict) == ["kitchen/recipes/bread.md"]
    none = await search(
        client,
        {
            "query": "bread tomato",
            "ai_search_options": {
                "retrieval": {"retrieval_type": "keyword", "keyword_match_mode": "and"}
            },
        },
    )
    assert keys(none) == []


async def test_both_filter_syntaxes(client: httpx.AsyncClient) -> None:  # noqa: F811
    def body(filters: Any) -> dict[str, Any]:
        retrieval = {"filters": filters, "match_threshold": 0.0}
        return {"query": "bread garden", "ai_search_options": {"retrieval": retrieval}}

    vectorize = await search(client, body({"folder": {"$eq": "kitchen/recipes/"}}))
    assert set(keys(vectorize)) == {"kitchen/recipes/bread.md"}
    shorthand = await search(client, body({"folder": ""}))
    assert set(keys(shorthand)) == {"garden.md"}
    autorag = await search(client, body({"type": "eq", "key": "folder", "value": ""}))
    assert set(keys(autorag)) == {"garden.md"}
    future_ms = await search(client, body({"timestamp": {"$gte": 4102444800000}}))
    assert keys(future_ms) == []
    past_ms = await search(client, body({"timestamp": {"$gte": "1000000000000"}}))
    assert set(keys(past_ms)) == {"garden.md", "kitchen/recipes/bread.md"}


async def test_options_that_do_not_apply_are_reported(client: httpx.AsyncClient) -> None:  # noqa: F811
    # Applied options are tested in test_query_options.py; these say why they changed nothing.
    body = {
        "query": "bread",
        "ai_search_options": {
            "query_rewrite": {"enabled": True},
            "cache": {"enabled": True, "cache_threshold": "close_enough"},
            "retrieval": {"boost_by": [{"field": "timestamp"}]},
        },
    }
    messages = [m["message"] for m in (await search(client, body))["messages"]]
    assert len(messages) == 2 and "not supported" not in " ".join(messages)
    assert "query_rewrite rewrites follow-up messages" in messages[0]
    assert "search results are not cached" in messages[1]
    quiet = await search(client, {"query": "bread"})
    assert quiet["messages"] == []


async def test_chat_completions_plain_and_streamed(client: httpx.AsyncClient) -> None:  # noqa: F811
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "bake bread"}]},
        ]
    }
    resp = await client.post(f"{INSTANCE}/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["object"] == "chat.completion" and "success" not in answer
    assert answer["choices"][0]["message"]["content"].startswith("Answer briefly")
    assert answer["chunks"][0]["item"]["key"] == "kitchen/recipes/bread.md"
    async with client.stream(
        "POST", f"{INSTANCE}/chat/completions", json={**body, "stream": True}, headers=AUTH
    ) as stream:
        raw = "".join([part async for part in stream.aiter_text()])
    # AI Search's exact order: the chunks as a named event first, then deltas, then [DONE].
    blocks = raw.strip().split("\n\n")
    assert blocks[0].startswith("event: chunks\ndata: [")
    chunks = json.loads(blocks[0].split("\ndata: ", 1)[1])
    assert chunks[0]["item"]["key"] == "kitchen/recipes/bread.md"
    assert blocks[-1] == "data: [DONE]"
    deltas = [json.loads(b.removeprefix("data: ")) for b in blocks[1:-1]]
    assert len(deltas) > 3 and all(d["object"] == "chat.completion.chunk" for d in deltas)
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tokens_created_through_the_api(client: httpx.AsyncClient) -> None:  # noqa: F811
    resp = await client.post("/accounts/acc/tokens", json={"name": "ci"}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    created = resp.json()["result"]
    mine = {"Authorization": f"Bearer {created['value']}"}
    assert (await client.get(f"{API}/instances", headers=mine)).status_code == 200
    verify = await client.get("/user/tokens/verify", headers=mine)
    assert verify.json()["result"] == {"id": created["id"], "status": "active"}
    listed = (await client.get("/accounts/acc/tokens", headers=AUTH)).json()["result"]
    assert [t["name"] for t in listed] == ["ci"] and "value" not in listed[0]
    assert created["value"] not in json.dumps(listed)
    resp = await client.delete(f"/accounts/acc/tokens/{created['id']}", headers=mine)
    assert resp.status_code == 200
    assert_error(await client.get(f"{API}/instances", headers=mine), 401, "invalid")
    assert_error(await client.post("/accounts/acc/tokens", json={}, headers=AUTH), 400, "name")


async def test_upload_download_delete(client: httpx.AsyncClient) -> None:  # noqa: F811
    resp = await client.post(f"{API}/instances", json={"id": "uploads"}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    items = f"{API}/namespaces/default/instances/uploads/items"
    text = b"Prune the apple tree in late winter before the buds open."
    resp = await client.post(
        items,
        files={"file": ("orchard/apple.txt", text)},
        data={"wait_for_completion": "true"},
        headers=AUTH,
    )
    assert resp.status_code == 200, resp.text
    item = resp.json()["result"]
    assert item["status"] == "completed" and item["key"] == "orchard/apple.txt"
    download = await client.get(f"{items}/{item['id']}/download", headers=AUTH)
    assert download.status_code == 200 and download.content == text
    found = await client.post(
        f"{API}/instances/uploads/search", json={"query": "prune apple tree"}, headers=AUTH
    )
    assert keys(found.json()) == ["orchard/apple.txt"]
    chunks = (await client.get(f"{items}/{item['id']}/chunks", headers=AUTH)).json()
    assert chunks["result"][0]["text"] == text.decode()
    assert (await client.delete(f"{items}/{item['id']}", headers=AUTH)).status_code == 200
    assert (await client.get(items, headers=AUTH)).json()["result"] == []
    assert_error(await client.get(f"{items}/{item['id']}", headers=AUTH), 404, "not found")
    sneaky = await client.post(items, files={"file": ("../escape.txt", b"x")}, headers=AUTH)
    assert_error(sneaky, 400, "invalid item key")
    not_multipart = await client.post(items, json={"file": "x"}, headers=AUTH)
    assert_error(not_multipart, 400, "multipart")
    stats = (await client.get(f"{API}/instances/uploads/stats", headers=AUTH)).json()["result"]
    assert stats["completed"] == 0 and stats["engine"]["vectorize"]["vectorsCount"] == 0
    assert (await client.delete(f"{API}/instances/uploads", headers=AUTH)).status_code == 200


async def test_jobs_run_inline_with_logs(client: httpx.AsyncClient) -> None:  # noqa: F811
    resp = await client.post(f"{INSTANCE}/jobs", json={"description": "nightly"}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["result"]["id"]
    for _ in range(600):  # up to 30 s
        job = (await client.get(f"{INSTANCE}/jobs/{job_id}", headers=AUTH)).json()["result"]
        if job["ended_at"]:
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "completed" and job["description"] == "nightly"
    logs = (await client.get(f"{INSTANCE}/jobs/{job_id}/logs", headers=AUTH)).json()
    assert logs["result_info"]["total_count"] == len(logs["result"]) >= 1
    page = (await client.get(f"{INSTANCE}/jobs?per_page=1", headers=AUTH)).json()
    assert len(page["result"]) == 1 and page["result_info"]["total_count"] == 2
    assert_error(await client.get(f"{INSTANCE}/jobs/nope", headers=AUTH), 404, "job 'nope'")


async def test_readyz_metrics_schema(client: httpx.AsyncClient) -> None:  # noqa: F811
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["result"]["checks"]["database"] == "ok"
    await search(client, {"query": "bread"})
    metrics = (await client.get("/metrics")).text
    assert 'ragd_items{instance="default",status="completed"} 2.0' in metrics
    route = "/accounts/{account_id}/ai-search/instances/{instance_id}/search"
    assert f'ragd_http_requests_total{{method="POST",route="{route}",status="200"}}' in metrics
    schema = (await client.get("/schema/openapi.json", headers=AUTH)).json()
    chat = "/accounts/{account_id}/ai-search/instances/{instance_id}/chat/completions"
    assert "post" in schema["paths"][chat]


async def test_a_chunking_change_marks_items_outdated_until_the_next_sync(
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    async def stats() -> dict[str, Any]:
        result: dict[str, Any] = (await client.get(f"{INSTANCE}/stats", headers=AUTH)).json()[
            "result"
        ]
        return result

    assert (await stats())["completed"] == 2
    resp = await client.put(INSTANCE, json={"chunk_size": 128}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    changed = await stats()
    assert changed["outdated"] == 2 and changed["completed"] == 0
    other_model = {"embedding_model": "BAAI/bge-small-en-v1.5"}
    assert_error(await client.put(INSTANCE, json=other_model, headers=AUTH), 400, "cannot change")
    job_id = (await client.post(f"{INSTANCE}/jobs", json={}, headers=AUTH)).json()["result"]["id"]
    for _ in range(600):  # up to 30 s
        job = (await client.get(f"{INSTANCE}/jobs/{job_id}", headers=AUTH)).json()["result"]
        if job["ended_at"]:
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "completed"
    again = await stats()
    assert again["completed"] == 2 and again["outdated"] == 0


async def test_an_empty_result_says_when_indexing_is_not_done(
    client: httpx.AsyncClient,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / "a.md").write_text("Apricots ripen in July.")
    body = {"id": "fresh", "source": str(folder)}
    assert (await client.post(f"{API}/instances", json=body, headers=AUTH)).status_code == 200
    url = f"{API}/instances/fresh/search"
    resp = await client.post(url, json={"query": "apricots"}, headers=AUTH)
    assert resp.json()["result"]["chunks"] == []
    assert "has not completed a sync yet" in resp.json()["messages"][0]["message"]
    for route in ("/search", "/ai-search"):
        legacy = await client.post(
            f"{route}?instance=fresh", json={"query": "apricots"}, headers=AUTH
        )
        assert "has not completed a sync yet" in legacy.json()["messages"][0]["message"]

    async with Runtime(settings) as rt:  # another process's sync, seen through the database
        job = await records.start_job(rt.sessions, "fresh", "user")
        info = ObjectInfo("a.md", "e1", 23, 1.0)
        await records.queue_items(rt.sessions, "fresh", [info], job.id)
        resp = await client.post(url, json={"query": "apricots"}, headers=AUTH)
        message = resp.json()["messages"][0]["message"]
        assert "a sync of this instance is running (0 of 1 items done)" in message
        await records.finish_job(rt.sessions, job.id, "completed", "done", {})
    resp = await client.post(url, json={"query": "apricots"}, headers=AUTH)
    assert resp.json()["messages"] == []  # synced (this one found nothing): nothing to say
    found = await search(client, {"query": "bread"})
    assert found["result"]["chunks"] and found["messages"] == []
